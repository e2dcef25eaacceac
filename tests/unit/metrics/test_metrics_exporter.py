"""The EPP's own metrics: one series per (model, target), bounded against invented model names;
flow control's queue gauges."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import generate_latest
from pytest import MonkeyPatch

from epp.datastore import Datastore, EndpointMetrics, EndpointSpec
from epp.flowcontrol.queues import Outcome
from epp.metrics import exporter
from epp.metrics.exporter import MAX_MODEL_NAME_LENGTH, MAX_MODEL_SERIES, OVERFLOW_MODEL, EppMetrics
from epp.requests import ApiKind, InferenceRequest


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


def test_pool_gauges_hold_the_last_refresh_once_refreshing() -> None:
    """GIE's --refresh-prometheus-metrics-interval: the pool-wide gauges change only when refreshed;
    without refreshes they are computed at every read. The per-pod queue is always current."""
    datastore = Datastore()
    metrics = EppMetrics()
    collector = metrics.watch_pool(datastore, "pool")
    endpoint = datastore.upsert(EndpointSpec("e", "10.0.0.1", 8000))
    endpoint.metrics = EndpointMetrics(waiting_queue_size=4, update_time=time.monotonic())

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"name": "pool", **labels})

    assert sample("inference_pool_average_queue_size") == 4  # at read time
    collector.refresh()
    endpoint.metrics = EndpointMetrics(waiting_queue_size=10, update_time=time.monotonic())
    assert sample("inference_pool_average_queue_size") == 4  # the refreshed value
    assert sample("inference_pool_per_pod_queue_size", model_server_pod="e") == 10
    collector.refresh()
    assert sample("inference_pool_average_queue_size") == 10
    assert sample("inference_pool_ready_pods") == 1


@dataclass
class Held:
    """A queued request as the flow-control metrics read it."""

    request: InferenceRequest
    byte_size: int


def test_queue_gauges_count_each_flows_requests_and_bytes_and_drop_an_empty_flow() -> None:
    metrics = EppMetrics()
    flow = metrics.flow_control
    request = InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="", model="m")
    labels = {
        "fairness_id": "t",
        "priority": "0",
        "inference_pool": "p",
        "model_name": "m",
        "target_model_name": "m",
    }
    first, second = Held(request, 100), Held(request, 30)

    def held() -> tuple[float | None, float | None]:
        return tuple(  # type: ignore[return-value]
            metrics.registry.get_sample_value(f"inference_extension_flow_control_queue_{what}", labels)
            for what in ("size", "bytes")
        )

    flow.queued(first, ("t", "0"), "p", +1)
    flow.queued(second, ("t", "0"), "p", +1)
    assert held() == (2.0, 130.0)
    flow.queued(first, ("t", "0"), "p", -1)
    assert held() == (1.0, 30.0)
    flow.queued(second, ("t", "0"), "p", -1)
    assert held() == (None, None)  # the series goes with the flow's last request
    page = generate_latest(metrics.registry).decode()
    assert "# TYPE inference_extension_flow_control_queue_size gauge" in page
    assert 'fairness_id="t"' not in page


def test_an_idle_flows_series_are_deleted_and_its_queue_series_slot_freed(monkeypatch: MonkeyPatch) -> None:
    """As GIE's and llm-d's flow registries: a flow with nothing queued and no request for
    FLOW_GC_TIMEOUT loses its enqueue and queue-duration series; a queued flow and `other` keep
    theirs, and the freed queue-duration slot labels the next new flow by its own id."""
    monkeypatch.setattr(exporter, "MAX_FLOW_SERIES", 2)
    metrics = EppMetrics()
    flow = metrics.flow_control
    now = [time.monotonic()]
    flow.clock = lambda: now[0]
    request = InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="", model="m")
    held = Held(request, 10)

    def served(fairness: str) -> None:
        labels = (fairness, "0")
        flow.enqueued(labels, Outcome.NOT_YET_FINALIZED, 0.001)
        flow.finalized(held, labels, Outcome.DISPATCHED, "p", 0.002)

    def queued_count(fairness: str) -> float | None:
        model = OVERFLOW_MODEL if fairness == OVERFLOW_MODEL else "m"  # past the cap, all is `other`
        labels = {"fairness_id": fairness, "priority": "0", "inference_pool": "p", "outcome": "Dispatched"}
        return metrics.registry.get_sample_value(
            "inference_extension_flow_control_request_queue_duration_seconds_count",
            {**labels, "model_name": model, "target_model_name": model},
        )

    def enqueue_count(fairness: str) -> float | None:
        return metrics.registry.get_sample_value(
            "inference_extension_flow_control_request_enqueue_duration_seconds_count",
            {"fairness_id": fairness, "priority": "0", "outcome": "NotYetFinalized"},
        )

    served("idle")
    served("waiting")  # the two queue-duration slots are taken
    flow.queued(held, ("waiting", "0"), "p", +1)  # and a request of it waits on
    served("late")  # no slot left: its queue duration is counted under `other`
    assert (queued_count("late"), queued_count(OVERFLOW_MODEL)) == (None, 1.0)
    assert enqueue_count("late") == 1.0

    now[0] += exporter.FLOW_GC_TIMEOUT - 1
    served("late")
    now[0] += 2  # `idle` and `waiting` idle for longer than the timeout, `late` not
    generate_latest(metrics.registry)  # a read of /metrics collects an idle pool's flows
    assert (queued_count("idle"), enqueue_count("idle")) == (None, None)
    assert (queued_count("waiting"), enqueue_count("waiting")) == (1.0, 1.0)  # it has a request queued
    assert (queued_count(OVERFLOW_MODEL), enqueue_count("late")) == (2.0, 2.0)

    served("new")  # the slot `idle` held labels the next flow by its own id
    assert queued_count("new") == 1.0
    served("idle")  # a collected flow that returns starts its series again
    assert (queued_count("idle"), enqueue_count("idle")) == (None, 1.0)  # (slots full again)
