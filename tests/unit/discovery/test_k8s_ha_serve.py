"""`epp serve --ha-enable-leader-election` in-process: two EndpointPickers discover the same pool
from the API server double and elect a leader over its Lease. Readiness (gRPC health on the probe
port, as GIE answers it) follows leadership; the standby's datastore is warm; a graceful stop hands
over at once, a crash after the lease duration; a leader that cannot renew makes the picker exit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp import serve
from epp.cli import build_parser
from epp.config.loader import load_config
from epp.config.model import PickerConfig
from epp.discovery.k8s.leader import LeaseTiming, lease_name
from epp.discovery.kubernetes import PoolRef
from epp.extproc.server import EXT_PROC_SERVICE
from epp.requests import ErrorCode, RequestError
from tests.k8s_double import LEASES, PODS, POOLS_V1, ApiServerDouble
from tests.k8s_double.objects import pod, pool_v1
from tests.unit.discovery.conftest import until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
FAST = LeaseTiming(lease_duration=1, renew_deadline=0.5, retry_period=0.05)
# For tests about who leads rather than how fast leadership moves: a loaded host (the suite beside
# other work) can miss FAST's half-second renew deadline, and the leader then steps down mid-test.
STEADY = LeaseTiming(lease_duration=30, renew_deadline=10, retry_period=0.05)
NO_SCRAPING = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}, {type: max-score-picker}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]}]
dataLayer: {sources: []}
"""
POOL = PoolRef("pool", "default")

PickerFactory = Callable[..., Awaitable[serve.EndpointPicker]]  # (timing, config=NO_SCRAPING's)


@pytest.fixture
async def start_picker(api: ApiServerDouble, kubeconfig: Path) -> AsyncIterator[PickerFactory]:
    api.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    api.apply(PODS, pod("a", "10.0.0.1", labels={"app": "vllm"}))
    started: list[serve.EndpointPicker] = []

    async def start(timing: LeaseTiming, config: PickerConfig | None = None) -> serve.EndpointPicker:
        options = serve.ServeOptions(
            host="127.0.0.1",
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            pool=POOL,
            pool_name=POOL.name,
            kubeconfig=kubeconfig,
            leader_election=timing,
            config=config or load_config(NO_SCRAPING),
            shutdown_grace=1.0,
            drain_window=0.0,
        )
        picker = serve.EndpointPicker(options)
        started.append(picker)
        await picker.start()
        return picker

    yield start
    for picker in started:
        await picker.stop()


async def health(picker: serve.EndpointPicker, service: str = "readiness") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.health_port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        return int(response.status)


async def until_ready(picker: serve.EndpointPicker, timeout: float = 5.0) -> float:
    """Seconds until the picker's readiness probe reports SERVING."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while await health(picker) != SERVING:
        assert loop.time() - began < timeout, "the standby did not become ready"
        await asyncio.sleep(0.02)
    return loop.time() - began


def holder(api: ApiServerDouble) -> str:
    return str(api.get(LEASES, lease_name(POOL))["spec"]["holderIdentity"])


async def test_only_the_leader_is_ready_and_the_standby_stays_warm(
    api: ApiServerDouble, start_picker: PickerFactory
) -> None:
    leader = await start_picker(STEADY)
    await until_ready(leader)
    standby = await start_picker(STEADY)
    await until(lambda: standby.datastore.synced, "the standby's discovery")

    assert leader.elector is not None and standby.elector is not None
    assert holder(api) == leader.elector.identity
    assert [e.hostport for e in standby.datastore.endpoints()] == ["10.0.0.1:8000"]  # warm
    for service in ("readiness", "", EXT_PROC_SERVICE):
        assert (await health(leader, service), await health(standby, service)) == (SERVING, NOT_SERVING)
    assert (await health(leader, "liveness"), await health(standby, "liveness")) == (SERVING, SERVING)
    assert await health(standby, "inference-extension") == UNKNOWN  # as GIE with leader election
    async with grpc.aio.insecure_channel(f"127.0.0.1:{standby.health_port}") as channel:
        listed = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    assert {name: s.status for name, s in listed.statuses.items()} == {
        EXT_PROC_SERVICE: NOT_SERVING,
        "liveness": SERVING,
        "readiness": NOT_SERVING,
    }


async def test_a_graceful_stop_hands_over_at_once(api: ApiServerDouble, start_picker: PickerFactory) -> None:
    leader = await start_picker(STEADY)
    await until_ready(leader)
    standby = await start_picker(STEADY)
    await until(lambda: standby.datastore.synced, "the standby's discovery")
    assert await health(standby) == NOT_SERVING

    assert leader.elector is not None
    former = leader.elector.identity
    await leader.stop()
    # Released: empty, or already the standby's (it retries every 50 ms while stop() finishes).
    assert holder(api) in ("", standby.elector.identity if standby.elector else "")
    assert holder(api) != former
    assert await until_ready(standby) < 2.0  # not the 30s lease
    assert standby.elector is not None and holder(api) == standby.elector.identity


async def test_a_crashed_leader_is_replaced_within_the_lease_duration(
    api: ApiServerDouble, start_picker: PickerFactory
) -> None:
    leader = await start_picker(FAST)
    await until_ready(leader)
    standby = await start_picker(FAST)
    await until(lambda: standby.datastore.synced, "the standby's discovery")
    assert leader.elector is not None

    await leader.elector.stop(release=False)  # the process died: nobody releases the Lease
    waited = await until_ready(standby)
    assert waited < FAST.lease_duration + 1.0
    assert standby.elector is not None and holder(api) == standby.elector.identity


async def test_a_leader_that_cannot_renew_stops_serving_and_fails(
    api: ApiServerDouble, start_picker: PickerFactory
) -> None:
    leader = await start_picker(FAST)
    await until_ready(leader)
    api.update(LEASES, lease_name(POOL), lambda lease: lease["spec"].update(holderIdentity="someone-else"))
    await asyncio.wait_for(leader.failed.wait(), 5)
    assert await health(leader) == NOT_SERVING


async def test_leader_election_needs_a_pool() -> None:
    args = build_parser("serve").parse_args(
        ["serve", "--endpoint", "127.0.0.1:8000", "--ha-enable-leader-election"]
    )
    with pytest.raises(ValueError, match="needs --pool-name"):
        serve.options_from_args(args)


@pytest.mark.parametrize("populate", [True, False])
async def test_a_standby_routes_unless_ha_populate_non_leader_datastore_is_off(
    start_picker: PickerFactory, populate: bool
) -> None:
    """llm-d's haPopulateNonLeaderDatastore gate (default on): a request that reaches the standby
    is routed; off, the router's standby keeps no endpoints, so it answers 503."""
    gates = "" if populate else "featureGates: [haPopulateNonLeaderDatastore=false]\n"
    config = load_config(
        NO_SCRAPING.replace("kind: EndpointPickerConfig\n", f"kind: EndpointPickerConfig\n{gates}")
    )
    assert config.standby_routes is populate
    pickers = []
    for _ in range(2):
        pickers.append(await start_picker(STEADY, config))
        await until(lambda: pickers[-1].datastore.synced, "discovery")
    leader, standby = pickers
    await until_ready(leader)
    body = b'{"model": "m", "prompt": "hi"}'
    headers = {":path": "/v1/completions", "x-request-id": "r"}
    assert leader.director.handle_body(body, headers, None).destination == "10.0.0.1:8000"
    if populate:
        assert standby.director.handle_body(body, headers, None).destination == "10.0.0.1:8000"
    else:
        with pytest.raises(RequestError, match="standby and keeps no endpoints") as refused:
            standby.director.handle_body(body, headers, None)
        assert refused.value.code is ErrorCode.SERVICE_UNAVAILABLE
