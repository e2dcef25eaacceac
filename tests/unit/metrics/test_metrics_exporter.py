"""The EPP's own metrics: one series per (model, target), bounded against invented model names."""

from __future__ import annotations

from prometheus_client import generate_latest

from epp.metrics.exporter import MAX_MODEL_NAME_LENGTH, MAX_MODEL_SERIES, OVERFLOW_MODEL, EppMetrics


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


def test_a_huge_model_name_is_counted_under_overflow_and_keeps_the_page_small() -> None:
    metrics = EppMetrics()
    page_before = len(generate_latest(metrics.registry))
    metrics.series("m" * 100_000, "m" * 100_000).error("NotFound")
    metrics.series("ok", "t" * (MAX_MODEL_NAME_LENGTH + 1)).error("NotFound")
    overflow = metrics.registry.get_sample_value(
        "inference_objective_request_error_total",
        {"model_name": OVERFLOW_MODEL, "target_model_name": OVERFLOW_MODEL, "error_code": "NotFound"},
    )
    assert overflow == 2
    assert len(generate_latest(metrics.registry)) < page_before + 100_000
