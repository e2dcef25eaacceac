"""llm-d's metric names beside GIE's, made at scrape time; process metrics."""

from __future__ import annotations

import time
from types import MappingProxyType

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.datastore import Datastore, EndpointSpec
from epp.flowcontrol.queues import Outcome
from epp.metrics.aliases import LLM_D, LLM_D_SCHEDULER
from epp.metrics.exporter import EppMetrics
from epp.requests import ApiKind, InferenceRequest
from tests.unit.metrics.test_metrics_exporter import Held


def page(metrics: EppMetrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> labels -> value, parsed back from the exposition text a scraper would read."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def traffic(metrics: EppMetrics) -> None:
    series = metrics.series("llama", "llama-lora")
    series.scheduled(0, 512, "pod-a", "ns", 8000)
    series.scheduled(0, 512, "pod-a", "ns", 8000)
    series.finished(0.5, 100, None)
    series.error("NotFound")
    flow = series.flow("tenant-a", 0)  # llm-d's per-request families (None: llm-d's names off)
    if flow is not None:
        flow.scheduled(512)
        flow.scheduled(512)
        flow.finished(0.5, 100, None)
        flow.error("NotFound")
    decision = ("pd", "disagg-profile-handler", "llama")
    metrics.pd_decisions.labels(*decision, "prefill-decode").inc(3)
    metrics.pd_decisions.labels("other", "disagg-profile-handler", "llama", "prefill-decode").inc(2)


def test_gie_names_only_by_default() -> None:
    metrics = EppMetrics()
    traffic(metrics)
    names = page(metrics)
    assert "inference_objective_request_total" in names
    # No alias of a GIE name (llm-d's own metrics, e.g. llm_d_epp_request_processing_duration_seconds,
    # are exported whatever the mode).
    aliases = {alias.name for alias in (*LLM_D.values(), *LLM_D_SCHEDULER.values())}
    suffixes = ("", "_total", "_bucket", "_count", "_sum", "_created")
    assert not [n for n in names if any(n.removesuffix(x) in aliases for x in suffixes if n.endswith(x))]


def test_llm_d_names_repeat_the_gie_series_with_llm_d_labels() -> None:
    metrics = EppMetrics(aliases=["llm-d"])
    traffic(metrics)
    names = page(metrics)
    labels = (("model_name", "llama"), ("priority", "0"), ("target_model_name", "llama-lora"))
    assert names["inference_objective_request_total"][labels] == 2
    flow = (("fairness_id", "tenant-a"), *labels)  # llm-d's carry the flow (epp.metrics.flow_requests)
    assert names["llm_d_epp_request_total"] == {flow: 2}
    attempt = (
        ("endpoint_name", "pod-a"), ("namespace", "ns"), ("port", "8000"), ("status", "success"),
        ("target_model_name", "llama-lora"),
    )  # fmt: skip
    assert names["llm_d_epp_scheduler_attempts_total"][attempt] == 2
    assert names["llm_d_epp_request_duration_seconds_count"][flow] == 1
    assert names["llm_d_epp_request_size_bytes_sum"][flow] == 1024
    assert names["llm_d_epp_request_running"][flow] == 1
    families = {f.name for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    exported = {f.name for f in metrics.registry.collect()}
    missing = [a.name for source, a in LLM_D.items() if source in exported and a.name not in families]
    assert missing == []


def test_scheduler_era_decision_counters_sum_over_plugins() -> None:
    metrics = EppMetrics(aliases=["llm-d-scheduler"])
    traffic(metrics)
    names = page(metrics)
    key = (("decision_type", "prefill-decode"), ("model_name", "llama"))
    assert names["llm_d_inference_scheduler_pd_decision_total"] == {key: 5}


def test_scheduler_era_data_layer_errors_repeat_llm_ds() -> None:
    """llm-d-router ebab687 still exports `llm_d_inference_scheduler_datalayer_poll_errors_total`
    and `_extract_errors_total` beside their llm_d_epp_* twins, with the same labels."""
    metrics = EppMetrics(aliases=["llm-d-scheduler"])
    metrics.datalayer_poll_errors.labels("metrics-data-source").inc(2)
    metrics.datalayer_extract_errors.labels("metrics-data-source", "core-metrics-extractor").inc(3)
    names = page(metrics)
    source = (("source_type", "metrics-data-source"),)
    assert names["llm_d_inference_scheduler_datalayer_poll_errors_total"] == {source: 2}
    extracted = (("extractor_type", "core-metrics-extractor"), *source)
    assert names["llm_d_inference_scheduler_datalayer_extract_errors_total"] == {extracted: 3}
    assert names["llm_d_epp_datalayer_extract_errors_total"] == {extracted: 3}


def test_llm_d_pool_gauges_include_the_spread() -> None:
    metrics = EppMetrics(aliases=["llm-d"])
    datastore = Datastore()
    datastore.replace_all(
        [
            EndpointSpec(name=n, address=f"10.0.0.{i}", port=8000, labels=MappingProxyType({}))
            for i, n in enumerate(("a", "b"))
        ]
    )
    for queue, endpoint in zip((2, 6), datastore.endpoints(), strict=True):
        endpoint.metrics.waiting_queue_size = queue
        endpoint.metrics.update_time = time.monotonic()
    metrics.watch_pool(datastore, "pool")
    names = page(metrics)
    assert names["llm_d_epp_average_queue_size"][(("name", "pool"),)] == 4
    assert names["inference_pool_average_queue_size"][(("name", "pool"),)] == 4
    assert names["llm_d_epp_std_dev_queue_size"][(("name", "pool"),)] == 2
    assert names["llm_d_epp_ready_endpoints"][(("name", "pool"),)] == 2
    # llm-d's per-endpoint queue (llm_d_router_metrics.go, DescInferencePoolPerEndpointQueueSize)
    per_endpoint = names["llm_d_epp_per_endpoint_queue_size"]
    assert per_endpoint == {
        (("model_server_endpoint", "a"), ("name", "pool")): 2,
        (("model_server_endpoint", "b"), ("name", "pool")): 6,
    }


def test_llm_d_flow_control_names_repeat_gies_as_llm_d_router_ebab687_names_them() -> None:
    """llm-d-router ebab687, pkg/epp/metrics/llm_d_router_metrics.go: the same labels and types;
    the saturation carries `stage` (each stage the pool has, and "effective", the value gating
    dispatch), which llm-d's autoscaling guides select on; GIE's name has the effective value."""
    metrics = EppMetrics(aliases=["llm-d"])
    flow = metrics.flow_control
    item = Held(InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="", model="m"), 100)
    flow.queued(item, ("t", "0"), "pool", +1)
    flow.enqueued(("t", "0"), Outcome.NOT_YET_FINALIZED, 0.001)
    flow.finalized(item, ("t", "0"), Outcome.DISPATCHED, "pool", 0.5)
    flow.dispatch_cycle.observe(0.002)
    flow.watch_saturation("pool", lambda: {"decode": 0.75, "effective": 0.75})
    names = page(metrics)
    flow_labels = (("fairness_id", "t"), ("inference_pool", "pool"), ("model_name", "m"))
    queue = (*flow_labels, ("priority", "0"), ("target_model_name", "m"))
    assert names["llm_d_epp_flow_control_queue_size"][queue] == 1
    assert names["llm_d_epp_flow_control_queue_bytes"][queue] == 100
    dispatched = (*flow_labels, ("outcome", "Dispatched"), ("priority", "0"), ("target_model_name", "m"))
    assert names["llm_d_epp_flow_control_request_queue_duration_seconds_sum"][dispatched] == 0.5
    enqueue = (("fairness_id", "t"), ("outcome", "NotYetFinalized"), ("priority", "0"))
    assert names["llm_d_epp_flow_control_request_enqueue_duration_seconds_count"][enqueue] == 1
    assert names["llm_d_epp_flow_control_dispatch_cycle_duration_seconds_count"][()] == 1
    assert names["llm_d_epp_flow_control_pool_saturation"] == {
        (("inference_pool", "pool"), ("stage", "decode")): 0.75,
        (("inference_pool", "pool"), ("stage", "effective")): 0.75,
    }
    assert names["inference_extension_flow_control_pool_saturation"] == {(("inference_pool", "pool"),): 0.75}
    text = generate_latest(metrics.registry).decode()
    for family, kind in [
        ("llm_d_epp_flow_control_queue_size", "gauge"),
        ("llm_d_epp_flow_control_pool_saturation", "gauge"),
        ("llm_d_epp_flow_control_request_queue_duration_seconds", "histogram"),
    ]:
        assert f"# TYPE {family} {kind}" in text


def test_process_metrics_are_exposed_by_a_server_registry() -> None:
    metrics = EppMetrics()
    metrics.expose_process_metrics()
    names = page(metrics)
    assert names["process_cpu_seconds_total"][()] > 0
    assert names["process_resident_memory_bytes"][()] > 0
