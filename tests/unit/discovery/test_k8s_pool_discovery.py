"""The EPP's Kubernetes discovery end to end in-process: the double serves pools, pods and
objectives; PoolDiscovery (through the real client and a kubeconfig) fills a real Datastore and
the real grpc.health.v1 servicer reports readiness from it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from epp.datastore import Datastore
from epp.discovery.kubernetes import FailureMode, PoolDiscovery, PoolRef
from epp.extproc.server import Health
from tests.k8s_double import OBJECTIVES, PODS, POOLS_ALPHA, POOLS_V1, ApiServerDouble
from tests.k8s_double.objects import objective, pod, pool_alpha, pool_v1
from tests.unit.discovery.conftest import FAST, until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ROLE = "llm-d.ai/role"


class Epp:
    """What serve.py wires together: datastore, discovery, objective priorities, health."""

    def __init__(self, ref: PoolRef, kubeconfig: Path) -> None:
        self.datastore = Datastore()
        self.objectives: Mapping[str, int] = {}
        self.discovery = PoolDiscovery(ref, self.datastore, self._set_objectives, kubeconfig, timing=FAST)
        self.health = Health(lambda: self.datastore.synced)

    def _set_objectives(self, priorities: Mapping[str, int]) -> None:
        self.objectives = priorities

    def endpoints(self) -> dict[str, str]:
        return {e.name: e.hostport for e in self.datastore.endpoints()}

    async def health_status(self) -> int:
        request = health_pb2.HealthCheckRequest(service="inference-extension")
        response = await self.health.Check(request, None)  # type: ignore[arg-type]
        return int(response.status)


EppFactory = Callable[..., Awaitable[Epp]]


@pytest.fixture
async def start_epp(kubeconfig: Path) -> AsyncIterator[EppFactory]:
    started: list[Epp] = []

    async def start(name: str = "pool", group: str = "inference.networking.k8s.io") -> Epp:
        epp = Epp(PoolRef(name, "default", group), kubeconfig)
        await epp.discovery.start()
        started.append(epp)
        return epp

    yield start
    for epp in started:
        await epp.discovery.stop()


def ready_pod(name: str, ip: str, **labels: str) -> dict[str, Any]:
    return pod(name, ip, labels={"app": "vllm", **labels})


async def serving(api: ApiServerDouble, start_epp: EppFactory) -> Epp:
    """The usual start: pool `pool` (app=vllm, port 8000) with Ready pod `a`, synced."""
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(PODS, ready_pod("a", "10.0.0.1"))
    epp = await start_epp()
    await until(lambda: epp.datastore.synced, "the first sync")
    return epp


async def test_ready_only_after_pool_and_pods_are_listed(api: ApiServerDouble, start_epp: EppFactory) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(PODS, ready_pod("a", "10.0.0.1"))
    api.apply(PODS, ready_pod("b", "10.0.0.2"))
    hold_pods = api.hold(PODS)
    epp = await start_epp()
    await until(lambda: any("labelSelector" in r.query for r in api.requests), "the pod list to be sent")
    assert not epp.datastore.synced
    assert await epp.health_status() == NOT_SERVING
    hold_pods.set()
    await until(lambda: epp.datastore.synced, "the first sync")
    assert epp.endpoints() == {"a-rank-0": "10.0.0.1:8000", "b-rank-0": "10.0.0.2:8000"}
    assert await epp.health_status() == SERVING


async def test_not_ready_while_the_pool_does_not_exist(api: ApiServerDouble, start_epp: EppFactory) -> None:
    api.apply(PODS, ready_pod("a", "10.0.0.1"))
    epp = await start_epp()
    await until(lambda: api.open_watches >= 2, "the pool watch and objective watch")
    assert await epp.health_status() == NOT_SERVING
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    await until(lambda: epp.datastore.synced, "the pool to appear")
    assert epp.endpoints() == {"a-rank-0": "10.0.0.1:8000"}


async def test_pod_churn(api: ApiServerDouble, start_epp: EppFactory) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(PODS, ready_pod("a", "10.0.0.1", **{ROLE: "decode"}))
    api.apply(PODS, pod("starting", None, labels={"app": "vllm"}, ready=False))
    api.apply(PODS, ready_pod("stranger", "10.0.0.9", app="other"))
    epp = await start_epp()
    await until(lambda: epp.endpoints() == {"a-rank-0": "10.0.0.1:8000"}, "the first sync")
    assert dict(epp.datastore.get("a-rank-0").labels) == {"app": "vllm", ROLE: "decode"}  # type: ignore[union-attr]

    api.update(PODS, "starting", lambda p: p["status"].update(podIP="10.0.0.3"))
    api.update(PODS, "starting", lambda p: p["status"]["conditions"][0].update(status="True"))
    await until(lambda: "starting-rank-0" in epp.endpoints(), "the pod that became ready")

    api.update(PODS, "a", lambda p: p["status"]["conditions"][0].update(status="False"))
    await until(lambda: "a-rank-0" not in epp.endpoints(), "the pod that became unready")
    api.update(PODS, "a", lambda p: p["status"]["conditions"][0].update(status="True"))
    await until(lambda: "a-rank-0" in epp.endpoints(), "the pod that is ready again")

    api.update(PODS, "a", lambda p: p["metadata"]["labels"].update({ROLE: "prefill"}))
    await until(lambda: epp.datastore.get("a-rank-0").role == "prefill", "the relabelled role")  # type: ignore[union-attr]

    api.update(PODS, "a", lambda p: p["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z"))
    await until(lambda: "a-rank-0" not in epp.endpoints(), "the terminating pod")
    api.delete(PODS, "a")
    api.update(PODS, "starting", lambda p: p["metadata"]["labels"].update(app="other"))
    api.update(PODS, "stranger", lambda p: p["metadata"]["labels"].update(app="vllm"))
    await until(lambda: epp.endpoints() == {"stranger-rank-0": "10.0.0.9:8000"}, "relabels in and out")
    assert epp.datastore.synced


async def test_one_endpoint_per_target_port_narrowed_by_active_ports(
    api: ApiServerDouble, start_epp: EppFactory
) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000, 8001, 8002]))
    api.apply(PODS, ready_pod("dp", "10.0.0.1"))
    epp = await start_epp()
    await until(lambda: len(epp.endpoints()) == 3, "three ranks")
    assert epp.endpoints() == {
        "dp-rank-0": "10.0.0.1:8000",
        "dp-rank-1": "10.0.0.1:8001",
        "dp-rank-2": "10.0.0.1:8002",
    }
    annotation = {"inference.networking.k8s.io/active-ports": "8000,8002"}
    api.update(PODS, "dp", lambda p: p["metadata"].update(annotations=annotation))
    await until(lambda: set(epp.endpoints()) == {"dp-rank-0", "dp-rank-2"}, "the active ports only")


async def test_pool_spec_changes(api: ApiServerDouble, start_epp: EppFactory) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(PODS, ready_pod("a", "10.0.0.1"))
    api.apply(PODS, ready_pod("b", "10.0.0.2", tier="gold"))
    epp = await start_epp()
    await until(lambda: set(epp.endpoints()) == {"a-rank-0", "b-rank-0"}, "the first sync")
    assert epp.discovery.failure_mode is FailureMode.FAIL_OPEN

    def set_spec(**changes: Any) -> Callable[[dict[str, Any]], None]:
        return lambda pool: pool["spec"].update(changes)

    api.update(POOLS_V1, "pool", set_spec(targetPorts=[{"number": 8000}, {"number": 9000}]))
    await until(lambda: len(epp.endpoints()) == 4, "a second rank per pod")
    assert epp.endpoints()["b-rank-1"] == "10.0.0.2:9000"

    pod_lists = sum(1 for r in api.requests if "labelSelector" in r.query and "watch" not in r.query)
    assert pod_lists == 1, "a targetPorts change re-derives endpoints from the pods held"
    api.update(POOLS_V1, "pool", set_spec(selector={"matchLabels": {"app": "vllm", "tier": "gold"}}))
    await until(lambda: set(epp.endpoints()) == {"b-rank-0", "b-rank-1"}, "the narrower selector")
    assert any(r.query.get("labelSelector") == "app=vllm,tier=gold" for r in api.requests)

    api.update(POOLS_V1, "pool", lambda p: p["spec"]["endpointPickerRef"].update(failureMode="FailClose"))
    await until(lambda: epp.discovery.failure_mode is FailureMode.FAIL_CLOSE, "the failure mode")


async def test_pool_deletion_empties_the_datastore_and_drops_readiness(
    api: ApiServerDouble, start_epp: EppFactory
) -> None:
    epp = await serving(api, start_epp)
    api.delete(POOLS_V1, "pool")
    await until(lambda: not epp.datastore.synced, "readiness to drop")
    assert epp.endpoints() == {}
    assert await epp.health_status() == NOT_SERVING
    assert epp.discovery.failure_mode is None
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    await until(lambda: epp.datastore.synced and len(epp.endpoints()) == 1, "the re-created pool")


async def test_unsupported_app_protocol_is_not_served(api: ApiServerDouble, start_epp: EppFactory) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000], app_protocol="kubernetes.io/h2c"))
    api.apply(PODS, ready_pod("a", "10.0.0.1"))
    epp = await start_epp()
    await until(lambda: epp.discovery.pool is not None, "the pool")
    assert not epp.datastore.synced
    api.update(POOLS_V1, "pool", lambda p: p["spec"].update(appProtocol="http"))
    await until(lambda: epp.datastore.synced, "readiness once the protocol is supported")


async def test_reconnects_and_410_keep_the_endpoints_current(
    api: ApiServerDouble, start_epp: EppFactory
) -> None:
    epp = await serving(api, start_epp)
    api.drop_watches()
    api.apply(PODS, ready_pod("b", "10.0.0.2"))
    await until(lambda: set(epp.endpoints()) == {"a-rank-0", "b-rank-0"}, "a change made while disconnected")
    api.drop_watches()
    api.delete(PODS, "a")
    api.compact()
    await until(lambda: set(epp.endpoints()) == {"b-rank-0"}, "a deletion lost to compaction (relist)")
    api.expire_watches()
    api.apply(PODS, ready_pod("c", "10.0.0.3"))
    await until(lambda: set(epp.endpoints()) == {"b-rank-0", "c-rank-0"}, "a change after a 410")
    assert epp.datastore.synced


async def test_objective_priorities(api: ApiServerDouble, start_epp: EppFactory) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(OBJECTIVES, objective("chat", "pool", priority=10))
    api.apply(OBJECTIVES, objective("batch", "pool", priority=-5))
    api.apply(OBJECTIVES, objective("default-priority", "pool"))
    api.apply(OBJECTIVES, objective("elsewhere", "another-pool", priority=99))
    api.apply(OBJECTIVES, objective("old-group", "pool", priority=7, group="inference.networking.x-k8s.io"))
    epp = await start_epp()
    await until(lambda: bool(epp.objectives), "the objectives")
    assert epp.objectives == {"chat": 10, "batch": -5, "default-priority": 0}
    api.update(OBJECTIVES, "chat", lambda o: o["spec"].update(priority=20))
    api.delete(OBJECTIVES, "batch")
    await until(lambda: epp.objectives == {"chat": 20, "default-priority": 0}, "updated priorities")


async def test_without_the_objective_crd_discovery_still_serves(kubeconfig: Path, tmp_path: Path) -> None:
    api = ApiServerDouble(served=[PODS, POOLS_V1])
    await api.start()
    datastore = Datastore()
    objectives: list[Mapping[str, int]] = []
    discovery = PoolDiscovery(
        PoolRef("pool"), datastore, objectives.append, api.write_kubeconfig(tmp_path / "kc"), timing=FAST
    )
    try:
        api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
        api.apply(PODS, ready_pod("a", "10.0.0.1"))
        await discovery.start()
        await until(lambda: datastore.synced, "the first sync")
        api.apply(PODS, ready_pod("b", "10.0.0.2"))
        await until(lambda: len(datastore.endpoints()) == 2, "pod events after the objective watch gave up")
        assert objectives == []
    finally:
        await discovery.stop()
        await api.stop()


async def test_the_v1alpha2_pool_group(api: ApiServerDouble, start_epp: EppFactory) -> None:
    api.apply(POOLS_ALPHA, pool_alpha("old", {"app": "vllm"}, 8000))
    api.apply(POOLS_V1, pool_v1("old", {"app": "nothing"}, [1]))  # same name, other group: ignored
    api.apply(PODS, ready_pod("a", "10.0.0.1"))
    api.apply(OBJECTIVES, objective("legacy", "old", priority=3, group="inference.networking.x-k8s.io"))
    epp = await start_epp("old", group="inference.networking.x-k8s.io")
    await until(lambda: epp.datastore.synced and bool(epp.objectives), "the first sync")
    assert epp.endpoints() == {"a-rank-0": "10.0.0.1:8000"}
    assert epp.discovery.failure_mode is FailureMode.FAIL_CLOSE
    assert epp.objectives == {"legacy": 3}


async def test_model_server_metrics_port_reaches_a_single_port_pools_endpoints(
    api: ApiServerDouble, kubeconfig: Path
) -> None:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(PODS, ready_pod("a", "10.0.0.1"))
    datastore = Datastore()
    discovery = PoolDiscovery(
        PoolRef("pool"), datastore, lambda _: None, kubeconfig, timing=FAST, metrics_port=9400
    )
    await discovery.start()
    try:
        await until(lambda: datastore.synced, "the first sync")
        (endpoint,) = datastore.endpoints()
        assert (endpoint.hostport, endpoint.spec.metrics_hostport) == ("10.0.0.1:8000", "10.0.0.1:9400")
        api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000, 8001]))  # several ports: each its own
        await until(lambda: len(datastore.endpoints()) == 2, "the second rank")
        assert {e.spec.metrics_hostport for e in datastore.endpoints()} == {"10.0.0.1:8000", "10.0.0.1:8001"}
    finally:
        await discovery.stop()
