"""The pool watch behind the sidecar's SSRF allowlist: the sidecar's own AllowList, fed by
PoolEndpointsWatch (and the sidecar's PoolSource around it) from the API server double."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from epp.discovery.k8s.model import GROUP_ALPHA
from epp.discovery.kubernetes import PoolEndpointsWatch, PoolRef
from epp.discovery.static import DiscoveryError
from epp.sidecar.allowlist import AllowList
from epp.sidecar.hostport import HostPort
from epp.sidecar.poolsource import PoolSource
from tests.k8s_double import PODS, POOLS_ALPHA, POOLS_V1, ApiServerDouble
from tests.k8s_double.objects import pod, pool_alpha, pool_v1
from tests.unit.discovery.conftest import FAST, until


def allows(allowlist: AllowList, hostport: str) -> bool:
    return allowlist.allows(HostPort.parse(hostport))


async def test_the_allowlist_follows_the_pools_ready_endpoints(
    api: ApiServerDouble, kubeconfig: Path
) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000, 8001]))
    api.apply(PODS, pod("prefill", "10.0.0.1", labels={"app": "vllm"}))
    api.apply(PODS, pod("unready", "10.0.0.2", labels={"app": "vllm"}, ready=False))
    allowlist = AllowList()
    watch = PoolEndpointsWatch(PoolRef("pool"), allowlist.replace, kubeconfig, FAST)
    await watch.start()
    try:
        assert allowlist.synced
        assert allows(allowlist, "10.0.0.1:8000") and allows(allowlist, "10.0.0.1:8001")
        assert not allows(allowlist, "10.0.0.1:9901"), "other ports of a pool pod stay closed"
        assert not allows(allowlist, "10.0.0.2:8000"), "not ready"

        api.update(PODS, "unready", lambda p: p["status"]["conditions"][0].update(status="True"))
        await until(lambda: allows(allowlist, "10.0.0.2:8000"), "the pod that became ready")
        api.delete(POOLS_V1, "pool")
        await until(lambda: len(allowlist) == 0, "nothing allowed without the pool")
    finally:
        await watch.stop()


async def test_start_fails_when_the_pool_cannot_be_listed(api: ApiServerDouble, kubeconfig: Path) -> None:
    api.served.discard(POOLS_V1)  # as with the CRD missing, or RBAC refusing the list
    watch = PoolEndpointsWatch(PoolRef("pool"), AllowList().replace, kubeconfig, FAST)
    with pytest.raises(TimeoutError):
        await watch.start(timeout=2)
    assert len([r for r in api.requests if "inferencepools" in r.path]) > 1, "it retried until the deadline"


async def test_a_start_cancelled_while_waiting_leaves_no_task_running(
    api: ApiServerDouble, kubeconfig: Path
) -> None:
    api.served.discard(POOLS_V1)  # never listed: start() waits for the first set
    watch = PoolEndpointsWatch(PoolRef("pool"), AllowList().replace, kubeconfig, FAST)
    before = asyncio.all_tasks()
    starting = asyncio.create_task(watch.start(timeout=30))
    await until(lambda: any("inferencepools" in r.path for r in api.requests), "the first list")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert asyncio.all_tasks() - before == set(), "the watch and its waiter ended with start()"


async def test_start_raises_the_watch_error(tmp_path: Path) -> None:
    watch = PoolEndpointsWatch(PoolRef("pool"), AllowList().replace, tmp_path / "missing-kubeconfig", FAST)
    with pytest.raises(
        DiscoveryError, match=r"^InferencePool default/pool \(inference.networking.k8s.io/v1\): no "
    ):
        await watch.start(timeout=5)


async def test_the_sidecars_pool_source_follows_an_alpha_pool(api: ApiServerDouble, kubeconfig: Path) -> None:
    """The deprecated v1alpha2 group: a flat selector and one targetPortNumber. A pod relabelled
    out of the pool leaves the allowlist, one relabelled in joins it."""
    api.apply(POOLS_ALPHA, pool_alpha("pool", {"app": "vllm"}, 8000))
    api.apply(PODS, pod("prefill", "10.0.0.1", labels={"app": "vllm"}))
    api.apply(PODS, pod("stranger", "10.0.0.2", labels={"app": "other"}))
    source = PoolSource(PoolRef("pool", group=GROUP_ALPHA), kubeconfig, FAST)
    await source.start()
    try:
        assert allows(source.allowlist, "10.0.0.1:8000") and len(source.allowlist) == 1
        api.update(PODS, "prefill", lambda p: p["metadata"]["labels"].update(app="gone"))
        api.update(PODS, "stranger", lambda p: p["metadata"]["labels"].update(app="vllm"))
        await until(lambda: allows(source.allowlist, "10.0.0.2:8000"), "the pod relabelled into the pool")
        assert not allows(source.allowlist, "10.0.0.1:8000"), "the pod relabelled out of it"
    finally:
        await source.stop()


async def test_the_sidecars_pool_source_refuses_to_start_without_rbac_for_pools(tmp_path: Path) -> None:
    api = ApiServerDouble(rbac=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])
    await api.start()
    try:
        api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        source = PoolSource(PoolRef("pool"), kubeconfig, FAST, sync_timeout=2)
        with pytest.raises(TimeoutError, match="may list and watch inferencepools and pods"):
            await source.start()
        assert any("inferencepools" in r.path for r in api.requests), "it asked, and was refused"
    finally:
        await api.stop()
