"""A request arriving when nothing waits runs the dispatch cycle itself: dispatched at once when
the pool has room, with the same metrics, and never ahead of requests already queued."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from epp.flowcontrol.controller import FlowController
from epp.metrics.exporter import EppMetrics
from epp.requests import RequestError
from tests.unit.flowcontrol.flow_helpers import built, flow_control_config, queued_request
from tests.unit.plugin_helpers import FakeClock

CONFIG = flow_control_config({"defaultRequestTTL": "8s"})


def sample(metrics: EppMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


FLOW = {"fairness_id": "tenant", "priority": "0"}
MODELS = {"inference_pool": "standalone", "model_name": "m", "target_model_name": "m"}


def left_queue(metrics: EppMetrics, outcome: str) -> float | None:
    """How many of flow `tenant`'s requests (model m) left the queue with `outcome`."""
    queue = "inference_extension_flow_control_request_queue_duration_seconds_count"
    return sample(metrics, queue, outcome=outcome, **FLOW, **MODELS)


async def test_a_lone_request_on_a_pool_with_room_is_dispatched_without_the_loop() -> None:
    metrics = EppMetrics()
    fc, _, detector = built(CONFIG, FakeClock(), metrics)
    detector.value = 0.5
    await fc.enqueue_and_wait(queued_request("r", "tenant"))
    assert fc._task is None  # the dispatch loop never started: no event-loop hop
    assert fc.length == 0 and fc.bytes == 0
    assert left_queue(metrics, "Dispatched") == 1.0
    enqueue = "inference_extension_flow_control_request_enqueue_duration_seconds_count"
    assert sample(metrics, enqueue, outcome="NotYetFinalized", **FLOW) == 1.0
    assert sample(metrics, "inference_extension_flow_control_dispatch_cycle_duration_seconds_count") == 1.0
    assert (
        sample(metrics, "inference_extension_flow_control_pool_saturation", inference_pool="standalone")
        == 0.5
    )
    assert sample(metrics, "inference_extension_flow_control_queue_size", **FLOW, **MODELS) is None


async def test_a_detector_that_raises_in_the_inline_cycle_leaves_nothing_queued() -> None:
    metrics = EppMetrics()
    fc, _, detector = built(CONFIG, FakeClock(), metrics)

    def broken(candidates: object) -> float:
        raise RuntimeError("broken detector")

    detector.saturation = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="broken detector"):
        await fc.enqueue_and_wait(queued_request("r", "tenant"))
    assert fc.length == 0 and fc.bytes == 0
    assert left_queue(metrics, "RejectedOther") == 1.0
    assert sample(metrics, "inference_extension_flow_control_queue_size", **FLOW, **MODELS) is None


async def test_a_request_arriving_behind_queued_ones_waits_its_turn() -> None:
    clock = FakeClock()
    fc, _, detector = built(CONFIG, clock)
    order: list[str] = []

    async def wait(name: str) -> None:
        await fc.enqueue_and_wait(queued_request(name, "tenant"))
        order.append(name)

    first = asyncio.ensure_future(wait("first"))
    await asyncio.sleep(0)
    assert fc.length == 1  # the pool reads full: it waits
    detector.value = 0.0  # room now; the next request finds `first` queued and queues behind it
    clock.now += 1.0  # a later arrival (FCFS orders by arrival time)
    second = asyncio.ensure_future(wait("second"))
    async with asyncio.timeout(10):
        await asyncio.gather(first, second)
    assert order == ["first", "second"]
    await fc.stop()


async def test_a_lone_request_on_a_saturated_pool_waits_for_room() -> None:
    fc, _, detector = built(CONFIG, FakeClock())
    waiting = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("r", "tenant")))
    await asyncio.sleep(0)
    assert fc.length == 1 and not waiting.done()
    detector.value = 0.0
    async with asyncio.timeout(10):
        await waiting
    assert fc.length == 0
    await fc.stop()


async def test_stopping_in_the_instant_a_waiter_is_cancelled_releases_it_once() -> None:
    """The waiter's future is cancelled before its handler runs; stop() evicts it then (seen
    in CI as InvalidStateError when the test's calls were cancelled right before the stop)."""
    metrics = EppMetrics()
    fc, _, _ = built(CONFIG, FakeClock(), metrics)
    waiting = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("r", "tenant")))
    await asyncio.sleep(0)
    assert fc.length == 1
    waiting.cancel()  # cancels the awaited future now; the waiter's handler runs on its next step
    await fc.stop()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert fc.length == 0 and fc.bytes == 0
    assert left_queue(metrics, "EvictedOther") == 1.0
    assert left_queue(metrics, "EvictedContextCancelled") is None


async def queued_as_its_ttl_runs_out(fc: FlowController) -> asyncio.Future[None]:
    """A request waiting on the saturated pool whose TTL's timer is due: the caller's next
    synchronous step runs just before the timer, and the timer before the waiter resumes."""
    # A deadline this short is due at the loop's first timer check after the wait begins.
    waiting = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("r", "tenant"), deadline=1e-9))
    await asyncio.sleep(0)
    assert fc.length == 1
    await asyncio.sleep(0)  # the caller resumes in the iteration that runs the timer next
    return waiting


async def test_stopping_in_the_instant_a_waiters_ttl_runs_out_releases_it_once() -> None:
    """The TTL's timer fires after stop() evicted the request and before its waiter resumes: the
    waiter sees the TimeoutError with the request already released (it released it again: the
    queue's length went to -1)."""
    metrics = EppMetrics()
    fc, _, _ = built(CONFIG, FakeClock(), metrics)
    waiting = await queued_as_its_ttl_runs_out(fc)
    await fc.stop()  # evicts it; the timer runs before the waiter resumes
    with pytest.raises(RequestError) as raised:
        await waiting
    assert (raised.value.status, raised.value.message) == (
        500,
        "internal flow control error: request evicted from queue: flow controller is not running",
    )
    assert fc.length == 0 and fc.bytes == 0
    assert left_queue(metrics, "EvictedOther") == 1.0
    assert left_queue(metrics, "EvictedTTL") is None


async def test_a_detector_raising_in_the_dispatch_loop_fails_the_queued_and_the_loop_goes_on() -> None:
    """The loop's task died with the error: the requests queued stayed, with no TTL for ever, and
    the error surfaced only as `Task exception was never retrieved`."""
    metrics = EppMetrics()
    fc, _, detector = built(flow_control_config({}), FakeClock(), metrics)
    waiting = [asyncio.ensure_future(fc.enqueue_and_wait(queued_request(n, "tenant"))) for n in "ab"]
    await asyncio.sleep(0)
    assert fc.length == 2  # the pool reads full: both wait, and the loop runs

    def broken(candidates: object) -> float:
        raise RuntimeError("broken detector")

    detector.saturation = broken  # type: ignore[method-assign]
    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert [(e.status, e.message) for e in outcomes if isinstance(e, RequestError)] == [
        (500, "internal flow control error: request evicted from queue: the dispatch cycle failed"),
    ] * 2
    assert fc.length == 0 and fc.bytes == 0
    assert left_queue(metrics, "RejectedOther") == 2.0
    del detector.saturation  # the detector works again: so does the loop
    detector.value = 1.0
    later = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("c", "tenant")))
    await asyncio.sleep(0)
    assert fc.length == 1
    detector.value = 0.0
    async with asyncio.timeout(10):
        await later
    await fc.stop()


async def test_a_request_dispatched_in_the_instant_its_ttl_runs_out_goes_on() -> None:
    metrics = EppMetrics()
    fc, _, detector = built(CONFIG, FakeClock(), metrics)
    waiting = await queued_as_its_ttl_runs_out(fc)
    detector.value = 0.0
    assert fc.dispatch_cycle()  # dispatches it; the timer runs before the waiter resumes
    await waiting  # no 503: dispatched is dispatched
    assert fc.length == 0 and fc.bytes == 0
    assert left_queue(metrics, "Dispatched") == 1.0
    assert left_queue(metrics, "EvictedTTL") is None
    await fc.stop()


async def test_a_fairness_policy_raising_on_dispatched_in_the_loop_loses_no_request() -> None:
    """The cycle had popped the request from its flow when the fairness policy's `dispatched`
    raised: no flow held it any more, so the loop's eviction of the queued missed it; with no TTL
    its waiter waited for ever and the queue's length stayed 1 (flow control busy for good)."""
    metrics = EppMetrics()
    fc, _, detector = built(flow_control_config({}), FakeClock(), metrics)
    waiting = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("a", "tenant")))
    await asyncio.sleep(0)
    assert fc.length == 1  # the pool reads full: it waits, and the loop runs
    band = fc.bands[0]

    def broken(band: object, item: object) -> None:
        raise RuntimeError("broken fairness policy")

    band.fairness.dispatched = broken  # type: ignore[method-assign]
    detector.value = 0.0
    with contextlib.suppress(RequestError):
        async with asyncio.timeout(5):
            await waiting
    assert waiting.done()
    assert fc.length == 0 and fc.bytes == 0
    await fc.stop()
