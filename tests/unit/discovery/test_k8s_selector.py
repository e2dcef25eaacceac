"""GIE's standalone mode, `--endpoint-selector app=vllm --endpoint-target-ports 8000`: the pods a
label selector matches, without an InferencePool, watched through the real client against the API
server double; and its flags as the charts render them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from epp.cli import parse_args
from epp.datastore import Datastore
from epp.discovery.kubernetes import SelectorDiscovery, SelectorRef
from epp.extproc.server import Health
from epp.serve import ServeOptions, options_from_args
from tests.k8s_double import PODS, ApiServerDouble
from tests.k8s_double.objects import pod
from tests.unit.discovery.conftest import FAST, until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Only what this mode needs: GIE's standalone chart grants pods get/list/watch and nothing else.
PODS_ONLY_ROLE = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


def serve_options(*argv: str) -> ServeOptions:
    return options_from_args(parse_args(list(argv)))


def test_chart_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """As llm-d's router-standalone chart renders them (the values are YAML-quoted, so no quote
    characters reach argv), with the env the chart sets from the downward API."""
    monkeypatch.setenv("NAMESPACE", "llm-d")
    monkeypatch.setenv("POD_NAME", "qwen3-32b-epp-7d9f8b6c5-x2x4q")
    options = serve_options(
        "--endpoint-selector", "app=vllm-qwen3-32b,tier=prod", "--endpoint-target-ports", "8000,8001"
    )
    assert options.pool is None
    assert options.selector == SelectorRef(
        {"app": "vllm-qwen3-32b", "tier": "prod"}, (8000, 8001), "llm-d", "qwen3-32b-epp"
    )
    assert options.pool_name == "qwen3-32b-epp"  # the pool gauges' `name`, as GIE names this pool


def test_namespace_flag_quotes_repeats_and_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    options = serve_options(
        '--endpoint-selector="app=vllm"',
        "--endpoint-target-ports=8000,8002",
        "--endpoint-target-ports",
        "8000",
        "--pool-namespace=ns",
    )
    assert options.selector == SelectorRef({"app": "vllm"}, (8000, 8002), "ns", "standalone")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--endpoint-selector=app=vllm"], "1 to 8 ports, not 0"),
        (["--endpoint-selector=app=vllm", "--endpoint-target-ports=1,2,3,4,5,6,7,8,9"], "not 9"),
        (["--endpoint-selector=app=vllm", "--endpoint-target-ports=http"], "'http' is not a port number"),
        (["--endpoint-selector=app", "--endpoint-target-ports=8000"], "--endpoint-selector: 'app': expected"),
        (["--endpoint-selector=app!=x", "--endpoint-target-ports=8000"], "expected key=value"),
        (["--endpoint-selector=a=b", "--endpoint-target-ports=8000", "--pool-name=p"], "exclude each other"),
        (["--endpoint-selector=a=b", "--endpoint-target-ports=8000", "--endpoint=10.0.0.1:8000"], "exclude"),
        (["--pool-name=p", "--endpoint-target-ports=8000"], "goes with --endpoint-selector"),
        (["--v=2"], "give --pool-name, --endpoint-selector, --endpoints-file or --endpoint"),
    ],
)
def test_bad_or_conflicting_flags(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        serve_options(*argv)


class Epp:
    """What serve.py wires together in this mode: datastore, selector discovery, health."""

    def __init__(self, ref: SelectorRef, kubeconfig: Path, metrics_port: int | None = None) -> None:
        self.datastore = Datastore()
        self.discovery = SelectorDiscovery(ref, self.datastore, kubeconfig, FAST, metrics_port)
        self.health = Health(lambda: self.datastore.synced)

    def endpoints(self) -> dict[str, str]:
        return {e.name: e.hostport for e in self.datastore.endpoints()}

    async def health_status(self) -> int:
        request = health_pb2.HealthCheckRequest(service="inference-extension")
        response = await self.health.Check(request, None)  # type: ignore[arg-type]
        return int(response.status)


@pytest.fixture
async def rbac_api() -> AsyncIterator[ApiServerDouble]:
    double = ApiServerDouble(rbac=PODS_ONLY_ROLE)
    await double.start()
    yield double
    await double.stop()


@pytest.fixture
async def epp(rbac_api: ApiServerDouble, tmp_path: Path) -> AsyncIterator[Epp]:
    ref = SelectorRef({"app": "vllm", "tier": "prod"}, (8000, 8001), "default", "epp")
    started = Epp(ref, rbac_api.write_kubeconfig(tmp_path / "kubeconfig"))
    yield started
    await started.discovery.stop()


async def test_pods_matching_the_selector_are_the_endpoints(rbac_api: ApiServerDouble, epp: Epp) -> None:
    rbac_api.apply(PODS, pod("a", "10.0.0.1", labels={"app": "vllm", "tier": "prod"}))
    rbac_api.apply(PODS, pod("other-tier", "10.0.0.2", labels={"app": "vllm", "tier": "dev"}))
    rbac_api.apply(PODS, pod("elsewhere", "10.0.0.3", labels={"app": "vllm", "tier": "prod"}, namespace="x"))
    hold = rbac_api.hold(PODS)
    await epp.discovery.start()
    await until(lambda: any("labelSelector" in r.query for r in rbac_api.requests), "the pod list to be sent")
    assert await epp.health_status() == NOT_SERVING  # not before the first list
    hold.set()
    await until(lambda: epp.datastore.synced, "the first list")
    assert epp.endpoints() == {"a-rank-0": "10.0.0.1:8000", "a-rank-1": "10.0.0.1:8001"}
    assert await epp.health_status() == SERVING
    (pods_request, *_) = [r for r in rbac_api.requests if "labelSelector" in r.query]
    assert pods_request.query["labelSelector"] == "app=vllm,tier=prod"
    assert all(
        "inferencepools" not in r.path and "inferenceobjectives" not in r.path for r in rbac_api.requests
    )


async def test_pod_churn_is_followed(rbac_api: ApiServerDouble, epp: Epp) -> None:
    labels = {"app": "vllm", "tier": "prod"}
    rbac_api.apply(PODS, pod("a", "10.0.0.1", labels=labels))
    await epp.discovery.start()
    await until(lambda: "a-rank-0" in epp.endpoints(), "the first list")

    rbac_api.apply(
        PODS,
        pod("b", "10.0.0.2", labels=labels, annotations={"inference.networking.k8s.io/active-ports": "8001"}),
    )
    await until(lambda: set(epp.endpoints()) == {"a-rank-0", "a-rank-1", "b-rank-1"}, "the new pod")
    rbac_api.update(PODS, "a", lambda p: p["status"]["conditions"][0].update(status="False"))
    await until(lambda: set(epp.endpoints()) == {"b-rank-1"}, "the unready pod to leave")
    rbac_api.update(PODS, "b", lambda p: p["metadata"]["labels"].update(tier="dev"))
    await until(lambda: epp.endpoints() == {}, "the relabelled pod to leave")
    assert epp.datastore.synced  # an empty selection is still a known one
    rbac_api.drop_watches()
    rbac_api.apply(PODS, pod("c", "10.0.0.4", labels=labels))
    await until(
        lambda: set(epp.endpoints()) == {"c-rank-0", "c-rank-1"}, "a pod added across a dropped watch"
    )


async def test_metrics_port_applies_to_a_single_target_port(
    rbac_api: ApiServerDouble, tmp_path: Path
) -> None:
    rbac_api.apply(PODS, pod("a", "10.0.0.1", labels={"app": "vllm"}))
    single = Epp(SelectorRef({"app": "vllm"}, (8000,)), rbac_api.write_kubeconfig(tmp_path / "kc"), 9400)
    await single.discovery.start()
    try:
        await until(lambda: single.datastore.synced, "the first list")
        (endpoint,) = single.datastore.endpoints()
        assert (endpoint.hostport, endpoint.spec.metrics_hostport) == ("10.0.0.1:8000", "10.0.0.1:9400")
    finally:
        await single.discovery.stop()
