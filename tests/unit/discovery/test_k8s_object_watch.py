"""`k8s-notification-source`'s watch against the API server double through the real client: pod
and Lease events reach the observers once each, a relist after a compacted gap reports only what
changed, and `epp serve` runs it for the rollout screener in the pool's namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient

from epp import serve
from epp.config.loader import load_config
from epp.datalayer.k8sobjects import POD, GroupVersionKind, ObjectEvent
from epp.discovery.k8s.client import api_client
from epp.discovery.k8s.objectwatch import ObjectWatch, object_lister, plural
from epp.discovery.kubernetes import PoolRef
from epp.plugins.disaggregatedset_rollout_screener import DisaggregatedSetRolloutScreener
from tests.k8s_double import LEASES, PODS, POOLS_V1, ApiServerDouble
from tests.k8s_double.objects import pod, pool_v1
from tests.unit.discovery.conftest import FAST, until


@pytest.fixture
async def client(kubeconfig: Path) -> AsyncIterator[ApiClient]:
    async with await api_client(kubeconfig) as client:
        yield client


def lease(name: str, holder: str, namespace: str = "default") -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"holderIdentity": holder}}


class Events(list[tuple[str, str]]):
    def __call__(self, event: ObjectEvent) -> None:
        self.append(("deleted" if event.deleted else "applied", event.key[1]))


async def test_pod_events_once_each_and_only_the_gap_after_a_relist(
    api: ApiServerDouble, client: ApiClient
) -> None:
    api.apply(PODS, pod("p0"))
    api.apply(PODS, pod("elsewhere", namespace="other"))
    events = Events()
    watch = ObjectWatch(client, POD, "default", events, FAST)
    watch.start()
    try:
        await until(lambda: events == [("applied", "p0")] and api.open_watches == 1, "the first list")
        api.apply(PODS, pod("p1"))
        api.update(PODS, "p0", lambda obj: obj["metadata"]["labels"].update(role="decode"))
        api.delete(PODS, "p1")
        want = [("applied", "p0"), ("applied", "p1"), ("applied", "p0"), ("deleted", "p1")]
        await until(lambda: events == want, "add, update, delete")
        # Dropped and compacted while away: the relist reports the deletion and the new pod only.
        api.drop_watches()
        api.delete(PODS, "p0")
        api.apply(PODS, pod("p2"))
        api.compact()
        await until(lambda: len(events) == 6, "the relist")
        assert sorted(events[4:]) == [("applied", "p2"), ("deleted", "p0")]
    finally:
        await watch.stop()


async def test_a_kind_of_an_api_group_is_listed_by_its_plural(
    api: ApiServerDouble, client: ApiClient
) -> None:
    api.apply(LEASES, lease("l0", "me"))
    events = Events()
    watch = ObjectWatch(
        client, GroupVersionKind("coordination.k8s.io", "v1", "Lease"), "default", events, FAST
    )
    watch.start()
    try:
        await until(lambda: events == [("applied", "l0")], "the lease")
        api.delete(LEASES, "l0")
        await until(lambda: events[-1:] == [("deleted", "l0")], "its deletion")
    finally:
        await watch.stop()


def test_plurals_and_unknown_core_kinds(client: ApiClient) -> None:
    assert [plural(k) for k in ("Pod", "Lease", "Policy", "Gateway", "Status")] == [
        "pods",
        "leases",
        "policies",
        "gateways",
        "statuses",
    ]
    with pytest.raises(ValueError, match="no such namespaced kind in the core API group"):
        object_lister(client, GroupVersionKind("", "v1", "Widget"), "default")
    with pytest.raises(ValueError, match="the core API group serves only version v1"):
        object_lister(client, GroupVersionKind("", "v2", "Pod"), "default")


SCREENED = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: disaggregatedset-rollout-screener
  name: rollout
  parameters:
    scope: {labelSelector: "disaggregatedset.x-k8s.io/name=my-set"}
    revisionGating: {mode: sum, requireRoles: {values: [prefill, decode]}}
- type: max-score-picker
dataLayer: {sources: []}
"""


def member(name: str, ip: str, revision: str, role: str) -> dict[str, object]:
    labels = {
        "app": "vllm",
        "disaggregatedset.x-k8s.io/name": "my-set",
        "disaggregatedset.x-k8s.io/revision": revision,
        "disaggregatedset.x-k8s.io/role": role,
    }
    return pod(name, ip, labels=labels)


def options(kubeconfig: Path, **changes: object) -> serve.ServeOptions:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "grpc_port": 0,
        "grpc_health_port": 0,
        "metrics_port": 0,
        "pool": PoolRef("pool", "default"),
        "pool_name": "pool",
        "kubeconfig": kubeconfig,
        "config": load_config(SCREENED),
        "shutdown_grace": 0.5,
        "drain_window": 0.0,
        **changes,
    }
    return serve.ServeOptions(**settings)  # type: ignore[arg-type]


async def test_serve_watches_the_pods_the_screener_needs(api: ApiServerDouble, kubeconfig: Path) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(PODS, member("p-a", "10.0.0.1", "A", "prefill"))
    api.apply(PODS, member("d-a", "10.0.0.2", "A", "decode"))
    picker = serve.EndpointPicker(options(kubeconfig))
    await picker.start()
    try:
        [source] = picker.object_sources
        assert (source.name, source.kind) == ("rollout/pod", POD)
        [screener] = source.extractors
        assert isinstance(screener, DisaggregatedSetRolloutScreener)
        await until(lambda: screener.shares == {"A": 1.0}, "the pods")
        api.apply(PODS, member("d-b", "10.0.0.3", "B", "decode"))
        api.apply(PODS, member("p-b", "10.0.0.4", "B", "prefill"))
        await until(lambda: screener.shares == {"A": 0.5, "B": 0.5}, "revision B covered")
    finally:
        await picker.stop()


async def test_serve_refuses_the_watch_without_kubernetes_discovery(kubeconfig: Path) -> None:
    picker = serve.EndpointPicker(options(kubeconfig, pool=None, endpoints=["127.0.0.1:8000"]))
    try:
        with pytest.raises(ValueError) as refused:
            await picker.start()
    finally:
        await picker.stop()
    assert str(refused.value) == (
        "k8s-notification-source rollout/pod watches Kubernetes objects: it needs Kubernetes discovery "
        "(--pool-name or --endpoint-selector), not --endpoint or --endpoints-file"
    )
