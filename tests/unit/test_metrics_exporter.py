"""The EPP's own metrics: one series per (model, target), bounded against invented model names."""

from __future__ import annotations

from epp.metrics.exporter import MAX_MODEL_SERIES, OVERFLOW_MODEL, EppMetrics


def test_model_series_are_reused_and_capped() -> None:
    metrics = EppMetrics()
    assert metrics.series("m", "m") is metrics.series("m", "m")
    for i in range(MAX_MODEL_SERIES + 50):
        metrics.series(f"invented-{i}", f"invented-{i}").error("NotFound")
    overflow = metrics.registry.get_sample_value(
        "inference_objective_request_error_total",
        {"model_name": OVERFLOW_MODEL, "target_model_name": OVERFLOW_MODEL, "error_code": "NotFound"},
    )
    assert overflow == 51  # the cap counts "m" too: 255 invented names fit, the next 51 overflow
    names = {
        s.labels["model_name"]
        for family in metrics.registry.collect()
        if family.name == "inference_objective_request_error"
        for s in family.samples
    }
    assert len(names) == MAX_MODEL_SERIES
