"""llm-d router's capacity gauges: the fraction of each priority band's limits (requests, bytes)
its queued requests hold, `llm_d_epp_flow_control_capacity_utilization_{requests,bytes}{priority,
inference_pool}`, and of the global limits, `..._global_capacity_utilization_*{inference_pool}`,
read when /metrics is read. A limit not set has no series (no ratio to a limit nothing enforces);
a band's maxBytes is GIE's 1 GB when omitted, so its bytes series is always there."""

from __future__ import annotations

import asyncio

from epp.metrics.exporter import EppMetrics
from epp.requests import InferenceRequest
from tests.unit.flowcontrol.flow_helpers import Queue, built, flow_control_config, queued_request
from tests.unit.plugin_helpers import FakeClock

POOL = "standalone"


def sized(name: str, priority: int, size: int = 40) -> InferenceRequest:
    request = queued_request(name, "t", priority)
    request.body_size = size
    return request


def value(metrics: EppMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(
        f"llm_d_epp_flow_control_{name}", {"inference_pool": POOL, **labels}
    )


async def test_bands_and_global_limits_report_what_the_queues_hold() -> None:
    config = flow_control_config(
        {
            "maxRequests": 8,
            "maxBytes": 4000,
            "defaultPriorityBand": {"maxRequests": 4},
            "priorityBands": [{"priority": 10, "maxBytes": 1000}],
        }
    )
    metrics = EppMetrics()
    fc, _, detector = built(config, FakeClock(), metrics)
    detector.value = 1.0  # full: requests wait
    queue = Queue(fc)
    await queue.add(sized("a", 0))
    await queue.add(sized("b", 0))
    await queue.add(sized("c", 10))
    assert value(metrics, "capacity_utilization_requests", priority="0") == 2 / 4
    assert value(metrics, "capacity_utilization_bytes", priority="0") == 80 / 1_000_000_000
    assert value(metrics, "capacity_utilization_requests", priority="10") is None  # no maxRequests
    assert value(metrics, "capacity_utilization_bytes", priority="10") == 40 / 1000
    assert value(metrics, "global_capacity_utilization_requests") == 3 / 8
    assert value(metrics, "global_capacity_utilization_bytes") == 120 / 4000
    await queue.drain(detector)
    assert value(metrics, "capacity_utilization_requests", priority="0") == 0.0
    assert value(metrics, "global_capacity_utilization_bytes") == 0.0
    await fc.stop()


async def test_no_global_series_without_global_limits() -> None:
    metrics = EppMetrics()
    fc, _, detector = built(flow_control_config({}), FakeClock(), metrics)
    detector.value = 0.0
    await fc.enqueue_and_wait(queued_request("a", "t", priority=2))  # its band made on demand
    await asyncio.sleep(0)
    assert value(metrics, "capacity_utilization_bytes", priority="2") == 0.0
    assert value(metrics, "capacity_utilization_requests", priority="2") is None
    assert value(metrics, "global_capacity_utilization_requests") is None
    assert value(metrics, "global_capacity_utilization_bytes") is None
    await fc.stop()
