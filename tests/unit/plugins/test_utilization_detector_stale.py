"""`utilization-detector` sets `llm_d_epp_flow_control_stale_endpoints{detector}` at each
saturation reading: the candidates it scored full because their metrics were missing or older
than metricsStalenessThreshold (llm-d router's gauge), so a stall from a metrics collection
failure can be told from overload."""

from __future__ import annotations

from epp.metrics.exporter import EppMetrics
from epp.plugins.utilization_detector import UtilizationDetector
from tests.unit.plugin_helpers import FakeClock, context, endpoint, plugin


def stale(metrics: EppMetrics, detector: str) -> float | None:
    return metrics.registry.get_sample_value("llm_d_epp_flow_control_stale_endpoints", {"detector": detector})


def test_each_reading_sets_the_count_of_stale_candidates() -> None:
    clock, metrics = FakeClock(), EppMetrics()
    detector = plugin(
        UtilizationDetector, {"metricsStalenessThreshold": "200ms"}, context(clock=clock, metrics=metrics)
    )
    assert stale(metrics, "utilization-detector") is None  # no series before a reading
    fresh = endpoint("fresh", scraped_at=clock())
    old = endpoint("old", scraped_at=clock() - 0.5)
    never = endpoint("never", scraped_at=0.0)  # never scraped
    assert detector.saturation([fresh, old, never]) == 2 / 3  # the two without fresh metrics read full
    assert stale(metrics, "utilization-detector") == 2.0
    detector.saturation([fresh])
    assert stale(metrics, "utilization-detector") == 0.0
    detector.saturation([old])
    assert stale(metrics, "utilization-detector") == 1.0
    assert detector.saturation([]) == 1.0
    assert stale(metrics, "utilization-detector") == 0.0  # an empty pool is not a collection failure


def test_the_series_is_named_by_the_detector_instance() -> None:
    metrics = EppMetrics()
    detector = UtilizationDetector(
        "gpu-pool-detector", UtilizationDetector.Params(), context(metrics=metrics)
    )
    detector.saturation([endpoint("old", scraped_at=0.0)])
    assert stale(metrics, "gpu-pool-detector") == 1.0
    assert stale(metrics, "utilization-detector") is None
