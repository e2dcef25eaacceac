"""`llm_d_epp_flow_control_requests_total{outcome, priority, inference_pool}`: every request that
enters flow control is counted once, when it leaves, by its final outcome (llm-d router's
EnqueueAndWait counts on return): dispatched, refused at capacity, its TTL expired, its client
gone, evicted when the controller stops, refused once it has stopped."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from epp.metrics.exporter import EppMetrics
from epp.requests import RequestError
from tests.unit.flowcontrol.flow_helpers import built, flow_control_config, queued_request
from tests.unit.plugin_helpers import FakeClock


def total(metrics: EppMetrics, outcome: str, priority: str = "0") -> float | None:
    return metrics.registry.get_sample_value(
        "llm_d_epp_flow_control_requests_total",
        {"outcome": outcome, "priority": priority, "inference_pool": "standalone"},
    )


async def test_each_request_is_counted_once_by_its_final_outcome() -> None:
    config = flow_control_config({"defaultRequestTTL": "50ms", "defaultPriorityBand": {"maxRequests": 1}})
    metrics = EppMetrics()  # llm-d's own metric, with no GIE twin: exported without aliases
    fc, _, detector = built(config, FakeClock(), metrics)
    detector.value = 0.0
    await fc.enqueue_and_wait(queued_request("dispatched", "t", priority=3))
    assert total(metrics, "Dispatched", "3") == 1.0
    detector.value = 1.0  # full: requests wait
    expiring = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("ttl", "t")))
    await asyncio.sleep(0)
    with pytest.raises(RequestError):  # the band holds 1 request at most
        await fc.enqueue_and_wait(queued_request("refused", "t"))
    assert total(metrics, "RejectedCapacity") == 1.0
    with pytest.raises(RequestError):
        await expiring
    assert total(metrics, "EvictedTTL") == 1.0
    cancelled = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("gone", "t")))
    await asyncio.sleep(0)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    assert total(metrics, "EvictedContextCancelled") == 1.0
    evicted = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("evicted", "t")))
    await asyncio.sleep(0)
    await fc.stop()
    with pytest.raises(RequestError):
        await evicted
    assert total(metrics, "EvictedOther") == 1.0
    with pytest.raises(RequestError):
        await fc.enqueue_and_wait(queued_request("late", "t"))
    assert total(metrics, "RejectedOther") == 1.0
    counted = [
        s.value
        for family in metrics.registry.collect()
        if family.name == "llm_d_epp_flow_control_requests"
        for s in family.samples
        if s.name.endswith("_total")
    ]
    assert sum(counted) == 6  # one count per request, none twice
