"""`inference_extension_flow_control_pool_saturation` is the pool's saturation now, queue empty or
not, as GIE's dispatch loop (which records it every cycle) keeps it: autoscalers and dispatch gates
read it. Ours parks while nothing waits, and the gauge used to keep the value of its last cycle
with requests queued (12.0 on a pool idle for minutes, seen under `epp run`)."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from epp.metrics.exporter import EppMetrics
from tests.unit.flowcontrol.flow_helpers import built, flow_control_config, queued_request
from tests.unit.plugin_helpers import FakeClock

CONFIG = flow_control_config({"defaultRequestTTL": "8s"})
POOL = {"inference_pool": "standalone"}


def saturation(metrics: EppMetrics) -> float | None:
    return metrics.registry.get_sample_value("inference_extension_flow_control_pool_saturation", POOL)


async def test_the_gauge_follows_the_pool_once_the_queue_is_empty() -> None:
    metrics = EppMetrics()
    fc, _, detector = built(CONFIG, FakeClock(), metrics)
    detector.value = 0.25
    assert saturation(metrics) == 0.25  # before any request, as GIE's loop records from its start
    detector.value = 1.5
    waiting = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("r", "tenant")))
    await asyncio.sleep(0)
    assert fc.length == 1 and saturation(metrics) == 1.5
    detector.value = 0.5  # room: dispatched
    async with asyncio.timeout(10):
        await waiting
    detector.value = 0.0  # the pool drains; nothing is queued, so no dispatch cycle runs
    assert fc.length == 0 and saturation(metrics) == 0.0
    await fc.stop()


async def test_a_detector_that_raises_leaves_its_sample_out_not_the_page() -> None:
    metrics = EppMetrics()
    _, _, detector = built(CONFIG, FakeClock(), metrics)
    assert saturation(metrics) == 1.0

    def broken(candidates: object) -> float:
        raise RuntimeError("broken detector")

    detector.saturation = broken  # type: ignore[method-assign]
    page = generate_latest(metrics.registry).decode()
    assert "inference_extension_flow_control_pool_saturation{" not in page
    assert "# TYPE inference_extension_flow_control_pool_saturation gauge" in page
