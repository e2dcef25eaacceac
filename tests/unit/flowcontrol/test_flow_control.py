"""GIE's flow-control layer end to end over a real gRPC channel: every outcome with its status
code, message and metric; priorities, fairness and ordering; scale from zero; bad input."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import cast

import grpc
import orjson
import pytest
from grpc._cython import cygrpc

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.extproc.pb import BodyMode, core, ext_proc, ext_proc_grpc
from epp.extproc.server import ExternalProcessor, bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.flowcontrol.controller import FlowController, bound_fairness_id
from epp.framework import PluginContext
from epp.metrics.exporter import MAX_FLOW_SERIES, EppMetrics
from epp.requestcontrol import Director
from epp.requests import ApiKind, InferenceRequest, RequestError
from tests.unit.flowcontrol.flow_helpers import flow_control_config

BUF = BodyMode.BUFFERED
GIE_DOCS = Path(__file__).parents[2] / "data" / "flowcontrol"


def queue_config(max_requests: int, ttl: str, gated: bool = True) -> str:
    """One band (priority 0) whose flows take turns; at most `max_requests` queued, each `ttl`."""
    band = {"priority": 0, "fairnessPolicyRef": "round-robin-fairness-policy"}
    section = {"maxRequests": max_requests, "defaultRequestTTL": ttl, "priorityBands": [band]}
    return flow_control_config(section, ["round-robin-fairness-policy"], gated)


class Harness:
    def __init__(self, director: Director, stub: ext_proc_grpc.ExternalProcessorStub) -> None:
        self.director = director
        self.datastore = director.datastore
        self.stub = stub
        self.metrics = director.metrics

    @property
    def flow_control(self) -> FlowController:
        assert self.director.flow_control is not None
        return self.director.flow_control

    def add(self, name: str = "a", port: int = 8000) -> None:
        self.datastore.upsert(
            EndpointSpec(
                name=name,
                address="10.0.0.1",
                port=port,
                models=frozenset({"m"}),
                labels=MappingProxyType({}),
            )
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def queue_count(self, outcome: str, fairness_id: str = "default-flow", priority: str = "0") -> float:
        return self.sample(
            "inference_extension_flow_control_request_queue_duration_seconds_count",
            fairness_id=fairness_id,
            priority=priority,
            outcome=outcome,
            inference_pool="standalone",
            model_name="m",
            target_model_name="m",
        )

    async def send(
        self, fairness_id: str | None = None, objective: str | None = None, prompt: str = "hi"
    ) -> grpc.aio.StreamStreamCall:
        extra = {}
        if fairness_id is not None:
            extra["x-gateway-inference-fairness-id"] = fairness_id
        if objective is not None:
            extra["x-gateway-inference-objective"] = objective
        call = self.stub.Process()
        await call.write(headers_msg(extra))
        assert (await read(call)).WhichOneof("response") == "request_headers"
        await call.write(body_msg(orjson.dumps({"model": "m", "prompt": prompt})))
        return call

    async def wait_queued(self, count: int) -> None:
        for _ in range(500):
            if self.flow_control.length == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.flow_control.length} queued, expected {count}")


def headers_msg(extra: dict[str, str]) -> ext_proc.ProcessingRequest:
    pairs = {":path": "/v1/completions", ":method": "POST", "content-type": "application/json", **extra}
    return ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=core.HeaderMap(
                headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
            )
        ),
        protocol_config=ext_proc.ProtocolConfiguration(request_body_mode=BUF, response_body_mode=BUF),
    )


def body_msg(body: bytes) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=True))


async def read(
    call: grpc.aio.StreamStreamCall, timeout: float = 5.0, skip_extensions: bool = True
) -> ext_proc.ProcessingResponse:
    """The next reply; by default past the EPP's override_message_timeout replies (buffered mode
    while flow control is busy), which tests/integration/test_flow_control_e2e.py covers."""
    while True:
        reply = await asyncio.wait_for(call.read(), timeout=timeout)
        if (
            skip_extensions
            and reply.WhichOneof("response") is None
            and reply.HasField("override_message_timeout")
        ):
            continue
        return reply


async def routed(call: grpc.aio.StreamStreamCall) -> None:
    reply = await read(call)
    assert reply.WhichOneof("response") == "request_body", reply


async def refused(call: grpc.aio.StreamStreamCall) -> tuple[int, str]:
    reply = await read(call)
    assert reply.WhichOneof("response") == "immediate_response", reply
    error = orjson.loads(reply.immediate_response.body)["error"]
    return reply.immediate_response.status.code, error["message"]


def response_headers(content_type: bytes = b"application/json") -> ext_proc.ProcessingRequest:
    """The model server's 200 response headers, as Envoy sends them to the EPP."""
    return ext_proc.ProcessingRequest(
        response_headers=ext_proc.HttpHeaders(
            headers=core.HeaderMap(
                headers=[
                    core.HeaderValue(key=":status", raw_value=b"200"),
                    core.HeaderValue(key="content-type", raw_value=content_type),
                ]
            )
        )
    )


async def finish(call: grpc.aio.StreamStreamCall, body: bytes = b"{}") -> None:
    """The response (`body`) ends: the request's load is released."""
    await call.write(response_headers())
    await read(call)
    await call.write(
        ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=body, end_of_stream=True))
    )
    await read(call)


async def make_harness(
    max_requests: int = 3,
    ttl: str = "0s",
    objectives: dict[str, int] | None = None,
    config_text: str | None = None,
) -> tuple[Harness, grpc.aio.Server, grpc.aio.Channel]:
    """The EPP's ext_proc server on a free port with `queue_config(max_requests, ttl)` (or
    `config_text`), and a client."""
    datastore = Datastore()
    datastore.synced = True
    config = load_config(config_text or queue_config(max_requests, ttl))
    director, _ = build_director(config, datastore, PluginContext(EppMetrics()), objectives)
    server = ext_proc_server(director, StreamOptions(), None)
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Harness(director, ext_proc_grpc.ExternalProcessorStub(channel)), server, channel


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h, server, channel = await make_harness(max_requests=10, objectives={"critical": 10, "batch": -1})
    yield h
    await channel.close()
    await server.stop(0)
    await h.flow_control.stop()


async def test_queued_request_is_dispatched_when_the_pool_has_room(harness: Harness) -> None:
    harness.add()
    first = await harness.send()
    await routed(first)
    second = await harness.send()
    extension = await read(second, skip_extensions=False)  # buffered: ask Envoy to wait
    assert extension.WhichOneof("response") is None
    assert extension.override_message_timeout.seconds == 300
    await harness.wait_queued(1)
    assert harness.sample(
        "inference_extension_flow_control_queue_size",
        fairness_id="default-flow",
        priority="0",
        inference_pool="standalone",
        model_name="m",
        target_model_name="m",
    ) == (1.0)
    for _ in range(500):  # the dispatch loop records saturation at its next cycle
        if harness.sample("inference_extension_flow_control_pool_saturation", inference_pool="standalone"):
            break
        await asyncio.sleep(0.01)
    assert (
        harness.sample("inference_extension_flow_control_pool_saturation", inference_pool="standalone") == 1.0
    )
    await finish(first)
    await routed(second)
    assert harness.queue_count("Dispatched") == 2
    assert harness.datastore.get("a").inflight_requests == 1  # type: ignore[union-attr]
    # The queue gauge's series leaves with the last queued request (bounded label sets).
    assert harness.sample(
        "inference_extension_flow_control_queue_size",
        fairness_id="default-flow",
        priority="0",
        inference_pool="standalone",
        model_name="m",
        target_model_name="m",
    ) == (0.0)


async def test_full_queue_rejects_with_429() -> None:
    harness, server, channel = await make_harness(max_requests=3)
    harness.add()
    await routed(await harness.send())
    waiting = [await harness.send() for _ in range(3)]  # maxRequests: 3
    await harness.wait_queued(3)
    status, message = await refused(await harness.send())
    assert status == 429
    assert message == "inference error: ResourceExhausted - request rejected pre-queue: queue at capacity"
    assert harness.queue_count("RejectedCapacity") == 1
    assert (
        harness.sample(
            "inference_objective_request_error_total",
            model_name="m",
            target_model_name="m",
            error_code="ResourceExhausted",
        )
        == 1
    )
    for call in waiting:
        call.cancel()
    await channel.close()
    await server.stop(0)
    await harness.flow_control.stop()


async def test_ttl_expiry_is_503() -> None:
    h, server, channel = await make_harness(ttl="100ms")
    try:
        h.add()
        await routed(await h.send())
        status, message = await refused(await h.send())
        assert status == 503
        assert message == (
            "inference error: ServiceUnavailable - request timed out in queue: "
            "request evicted from queue: request TTL expired"
        )
        assert h.queue_count("EvictedTTL") == 1
        assert h.flow_control.length == 0
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()


async def test_client_gone_leaves_the_queue_without_load(harness: Harness) -> None:
    harness.add()
    await routed(await harness.send())
    gone = await harness.send()
    await harness.wait_queued(1)
    gone.cancel()
    await harness.wait_queued(0)
    for _ in range(200):
        if harness.queue_count("EvictedContextCancelled") == 1:
            break
        await asyncio.sleep(0.01)
    assert harness.queue_count("EvictedContextCancelled") == 1
    assert harness.datastore.get("a").inflight_requests == 1  # type: ignore[union-attr]


async def test_stopping_evicts_queued_requests_with_500(harness: Harness) -> None:
    harness.add()
    await routed(await harness.send())
    queued = await harness.send()
    await harness.wait_queued(1)
    await harness.flow_control.stop()
    status, message = await refused(queued)
    assert status == 500
    assert message == (
        "inference error: Internal - internal flow control error: request evicted from queue: "
        "flow controller is not running"
    )
    assert harness.queue_count("EvictedOther") == 1


async def test_an_empty_pool_queues_until_an_endpoint_comes(harness: Harness) -> None:
    call = await harness.send()
    await harness.wait_queued(1)
    harness.add()
    await routed(call)


async def test_higher_priority_goes_first_and_fairness_ids_take_turns(harness: Harness) -> None:
    harness.add()
    holder = await harness.send()
    await routed(holder)
    order: list[str] = []

    async def one(fairness_id: str, objective: str | None = None) -> None:
        call = await harness.send(fairness_id, objective)
        await routed(call)
        order.append(fairness_id)
        await finish(call)

    tasks = []
    for fairness_id in ["a", "a", "a", "b"]:  # band 0, round robin: a, b, a, a
        tasks.append(asyncio.ensure_future(one(fairness_id)))
        await harness.wait_queued(len(tasks))
    tasks.append(asyncio.ensure_future(one("vip", "critical")))  # band 10: first
    await harness.wait_queued(5)
    tasks.append(asyncio.ensure_future(one("low", "batch")))  # band -1: last, queued not shed
    await harness.wait_queued(6)
    await finish(holder)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == ["vip", "a", "b", "a", "a", "low"]


def test_fairness_ids_are_bounded() -> None:
    assert bound_fairness_id(None) == bound_fairness_id("") == "default-flow"
    huge = "x" * 1_000_000
    bounded = bound_fairness_id(huge)
    assert len(bounded) == 97 and bounded.startswith("x" * 64)
    assert bound_fairness_id(huge + "y") != bounded


async def test_5000_fairness_ids_leave_nothing_behind() -> None:
    """Flows exist only while they hold requests, and metric labels are capped: after 5,000
    distinct tenants have queued and been served, the EPP's structures and /metrics are back to
    small (docs/benchmarks.md measures 100,000 with bench/flow_control_memory.py)."""
    metrics = EppMetrics()
    datastore = Datastore()
    config = load_config(queue_config(0, "0s"))
    director, _ = build_director(config, datastore, PluginContext(metrics))
    controller = director.flow_control
    assert controller is not None
    gc.collect()
    tracemalloc.start()
    # The metric children are bounded by the label cap and counted as series below; since the
    # EPP's histograms keep their values in epp/metrics (not in prometheus_client), leave them out.
    ours = [tracemalloc.Filter(True, "*/epp/*"), tracemalloc.Filter(False, "*/epp/metrics/*")]
    before = tracemalloc.take_snapshot().filter_traces(ours)

    async def one(i: int) -> None:
        request = InferenceRequest(request_id=str(i), api=ApiKind.COMPLETIONS, path="", model="m", headers={})
        request.fairness_id = bound_fairness_id(f"tenant-{i}")
        await controller.enqueue_and_wait(request)

    tasks = [asyncio.ensure_future(one(i)) for i in range(5_000)]
    await asyncio.sleep(0)
    peak_flows = len(controller.bands[0].flows)
    datastore.upsert(
        EndpointSpec(name="a", address="10.0.0.1", port=1, models=frozenset(), labels=MappingProxyType({}))
    )
    controller.detector = _Never()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    del tasks
    gc.collect()
    after = tracemalloc.take_snapshot().filter_traces(ours)
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert peak_flows == 5_000
    assert controller.length == 0 and not controller.bands[0].flows
    assert len(controller.bands[0].rotation) <= 16
    page = metrics.registry.collect()
    series = sum(len(m.samples) for m in page if m.name.startswith("inference_extension_flow_control"))
    assert series < 256 * 40  # 256 fairness labels at most (histogram buckets), no queue gauges left
    assert grown < 256 * 1024, grown  # what epp/ code still holds
    await controller.stop()


async def _queue_series(pairs: int, models: int) -> int:
    """Queue-duration histogram samples after `pairs` requests, each a distinct (fairness id,
    model) pair drawn from 200 fairness ids and `models` model names, all served."""
    metrics = EppMetrics()
    datastore = Datastore()
    director, _ = build_director(load_config(queue_config(0, "0s")), datastore, PluginContext(metrics))
    controller = director.flow_control
    assert controller is not None
    datastore.upsert(
        EndpointSpec(name="a", address="10.0.0.1", port=1, models=frozenset(), labels=MappingProxyType({}))
    )
    controller.detector = _Never()

    async def one(i: int) -> None:
        model = f"model-{i // 200 % models}"
        request = InferenceRequest(str(i), ApiKind.COMPLETIONS, "", model=model, headers={})
        request.fairness_id = bound_fairness_id(f"tenant-{i % 200}")
        await controller.enqueue_and_wait(request)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(pairs))), 120)
    await controller.stop()
    name = "inference_extension_flow_control_request_queue_duration_seconds"
    return sum(len(m.samples) for m in metrics.registry.collect() if m.name == name)


async def test_distinct_fairness_and_model_pairs_do_not_multiply_the_queue_series() -> None:
    """Fairness ids and model names are each capped at 256 labels, but the queue-duration
    histogram is labelled by both: a client inventing both made up to 256 x 256 series (x
    outcomes x ~20 samples each). Its children are capped too: 5,000 pairs (200 fairness ids x 25
    models) cost no more series than MAX_FLOW_SERIES pairs, against 200 (one model) in this run."""
    baseline = await _queue_series(200, 1)
    per_pair = baseline / 200
    assert per_pair > 10  # buckets, count, sum, created
    assert await _queue_series(5_000, 25) <= (MAX_FLOW_SERIES + 1) * per_pair


class _Never:
    """A detector that never reports saturation."""

    def saturation(self, candidates: object) -> float:
        return 0.0


EXAMPLES = [
    *sorted(p for p in GIE_DOCS.glob("*.yaml") if p.name != "SOURCES.yaml"),
    GIE_DOCS.parent / "upstream/configs/llmd-bench-8bc9f1d__config__scenarios__guides__flow-control.yaml",
]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_gie_flow_control_documentation_examples_load(example: Path) -> None:
    config = load_config(example.read_text())
    assert config.flow_control_spec is not None and config.warnings == ()


async def test_ungated_config_sheds_instead_of_queueing() -> None:
    text = queue_config(3, "0s", gated=False)
    director, _ = build_director(load_config(text), Datastore(), PluginContext(EppMetrics()))
    assert director.flow_control is None


async def test_the_callers_deadline_bounds_the_wait() -> None:
    """GIE waits under the caller's context: its deadline (the ext_proc call's) cuts a longer TTL."""
    director, _ = build_director(
        load_config(queue_config(0, "60s")), Datastore(), PluginContext(EppMetrics())
    )
    controller = director.flow_control
    assert controller is not None
    request = InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="", model="m", headers={})
    started = asyncio.get_running_loop().time()
    with pytest.raises(RequestError) as caught:
        await controller.enqueue_and_wait(request, deadline=0.05)
    assert caught.value.status == 503 and "request TTL expired" in caught.value.message
    assert asyncio.get_running_loop().time() - started < 5
    await controller.stop()


class _GoneGateway:
    """grpc.aio's call context whose gateway resets the stream while the EPP's request to wait
    longer is being sent: that send fails in gRPC core (ExecuteBatchError), as every later one."""

    def __init__(self) -> None:
        self.writes: list[ext_proc.ProcessingResponse] = []

    def time_remaining(self) -> float | None:
        return None

    async def write(self, reply: ext_proc.ProcessingResponse) -> None:
        self.writes.append(reply)
        if reply.HasField("override_message_timeout") or len(self.writes) > 2:
            raise cygrpc.ExecuteBatchError("Failed 'execute_batch': the stream was reset")


async def test_a_failed_send_of_the_wait_extension_is_not_answered_as_the_epps_failure(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway gone while the EPP asks it to wait longer (buffered body, flow control busy):
    the send's failure ends the stream. It was taken for the EPP's own failure: logged as an
    ERROR with its traceback, counted as an internal error (500) and answered by a second send
    into the reset (the batch grpc.aio then leaks, grpc/grpc#43360)."""
    harness.add()
    first = await harness.send()
    await routed(first)

    async def requests() -> AsyncIterator[ext_proc.ProcessingRequest]:
        yield headers_msg({})
        yield body_msg(orjson.dumps({"model": "m", "prompt": "hi"}))

    gateway = _GoneGateway()
    processor = ExternalProcessor(harness.director, StreamOptions())
    with pytest.raises(cygrpc.ExecuteBatchError):
        await processor.Process(requests(), cast(grpc.aio.ServicerContext, gateway))
    sent = [reply.WhichOneof("response") or "override_message_timeout" for reply in gateway.writes]
    assert sent == ["request_headers", "override_message_timeout"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    errors = [
        sample
        for family in harness.metrics.registry.collect()
        if family.name == "inference_objective_request_error"
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
    assert errors == []
    assert harness.flow_control.length == 0
