"""The EPP's own Prometheus metrics, under GIE's names and labels so existing dashboards work."""

from __future__ import annotations

import asyncio
import enum
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp import __version__
from epp.datastore import Datastore, Endpoint
from epp.metrics.aliases import NAME_SETS, AliasCollector
from epp.metrics.buckets import (
    DURATION_BUCKETS,
    HIT_BYTES_BUCKETS,
    HIT_RATIO_BUCKETS,
    INPUT_TOKEN_BUCKETS,
    NTPOT_BUCKETS,
    OUTPUT_TOKEN_BUCKETS,
    REQUEST_SIZE_BUCKETS,
    RESPONSE_SIZE_BUCKETS,
)
from epp.metrics.capacity import CapacityGauges, OccupancySource
from epp.metrics.families import Families, alpha
from epp.metrics.flow_requests import FlowRequestMetrics, FlowSeries, record_finished
from epp.metrics.inflight import InFlightLoadGauges
from epp.metrics.latency import ResponseLatencies
from epp.metrics.prefix_indexer import HitRecorder, PrefixIndexerMetrics
from epp.requests import InferenceRequest, Usage

SCHEDULER_BUCKETS = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
REQUEST_PROCESSING_BUCKETS = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]  # fmt: skip
RESPONSE_PROCESSING_BUCKETS = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
]  # fmt: skip


_POOL_GAUGES = {
    "inference_pool_average_kv_cache_utilization": "average KV-cache utilisation of the pool's endpoints",
    "inference_pool_average_queue_size": "average waiting-queue length of the pool's endpoints",
    "inference_pool_average_running_requests": "average running requests of the pool's endpoints",
    "inference_pool_ready_pods": "endpoints with fresh metrics",
}


class PoolCollector(Collector):
    """Pool gauges from endpoints with fresh metrics (GIE's 2 s staleness). The pool-wide gauges
    are computed when /metrics is read, or, once `refresh` has been called (GIE's
    --refresh-prometheus-metrics-interval loop), hold the values of the last refresh; the per-pod
    queue gauge is always current, as in GIE."""

    def __init__(self, datastore: Datastore, pool_name: str, staleness: float, std_dev: bool) -> None:
        self._datastore = datastore
        self._pool = pool_name
        self._staleness = staleness
        self._std_dev = std_dev  # llm-d's router also reports the spread, under its names only
        self._snapshot: dict[str, tuple[str, float]] | None = None

    def _fresh(self) -> list[Endpoint]:
        now = time.monotonic()
        return [e for e in self._datastore.endpoints() if e.healthy and e.metrics.age(now) <= self._staleness]

    def pool_values(self) -> dict[str, tuple[str, float]]:
        """Gauge name -> (help, value) of the pool-wide gauges, now."""
        fresh = self._fresh()
        count = len(fresh)

        def average(values: list[float]) -> float:
            return sum(values) / count if count else 0.0

        values = {
            "inference_pool_average_kv_cache_utilization": average([e.metrics.kv_cache_usage for e in fresh]),
            "inference_pool_average_queue_size": average(
                [float(e.metrics.waiting_queue_size) for e in fresh]
            ),
            "inference_pool_average_running_requests": average(
                [float(e.metrics.running_requests_size) for e in fresh]
            ),
            "inference_pool_ready_pods": float(count),
        }
        gauges = {name: (_POOL_GAUGES[name], value) for name, value in values.items()}
        if self._std_dev:
            spreads = {
                "kv_cache_utilization": [e.metrics.kv_cache_usage for e in fresh],
                "queue_size": [float(e.metrics.waiting_queue_size) for e in fresh],
                "running_requests": [float(e.metrics.running_requests_size) for e in fresh],
            }
            for what, samples in spreads.items():
                spread = statistics.pstdev(samples) if samples else 0.0
                gauges[f"llm_d_epp_std_dev_{what}"] = (f"standard deviation of the endpoints' {what}", spread)
        return gauges

    def refresh(self) -> None:
        self._snapshot = self.pool_values()

    async def refresh_every(self, interval: float) -> None:
        """Refresh now, then every `interval` seconds until cancelled."""
        while True:
            self.refresh()
            await asyncio.sleep(interval)

    def collect(self) -> Iterator[Metric]:
        gauges = self._snapshot if self._snapshot is not None else self.pool_values()
        for name, (help_text, value) in gauges.items():
            family = GaugeMetricFamily(name, alpha(help_text), labels=["name"])
            family.add_metric([self._pool], value)
            yield family
        per_pod = GaugeMetricFamily(
            "inference_pool_per_pod_queue_size",
            alpha("waiting queue per endpoint"),
            labels=["name", "model_server_pod"],
        )
        for endpoint in self._fresh():
            per_pod.add_metric([self._pool, endpoint.name], float(endpoint.metrics.waiting_queue_size))
        yield per_pod


class EppMetrics:
    """All EPP metrics in one registry (not the global one, so tests can run several EPPs).
    `aliases` names extra name sets of `epp.metrics.aliases.NAME_SETS` to expose as well."""

    def __init__(self, registry: CollectorRegistry | None = None, aliases: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry()
        self.aliases = tuple(aliases)
        f = Families(self.registry)
        # The director's per-request counters and gauge: written from the event loop alone.
        per_request = Families(self.registry, one_writer=True)
        model = ["model_name", "target_model_name"]
        self.requests = per_request.counter(
            "inference_objective_request_total", "requests scheduled", [*model, "priority"]
        )
        self.errors = f.counter(
            "inference_objective_request_error_total",
            "requests answered with an error",
            [*model, "error_code"],
        )
        self.duration = f.histogram(
            "inference_objective_request_duration_seconds",
            "request latency through the EPP",
            model,
            DURATION_BUCKETS,
        )
        self.request_sizes = f.histogram(
            "inference_objective_request_sizes", "request body bytes", model, REQUEST_SIZE_BUCKETS
        )
        self.response_sizes = f.histogram(
            "inference_objective_response_sizes", "response body bytes", model, RESPONSE_SIZE_BUCKETS
        )
        self.input_tokens = f.histogram(
            "inference_objective_input_tokens", "prompt tokens", model, INPUT_TOKEN_BUCKETS
        )
        self.output_tokens = f.histogram(
            "inference_objective_output_tokens", "completion tokens", model, OUTPUT_TOKEN_BUCKETS
        )
        self.cached_tokens = f.histogram(
            "inference_objective_prompt_cached_tokens",
            "prompt tokens served from the prefix cache",
            model,
            INPUT_TOKEN_BUCKETS,
        )
        self.running = per_request.gauge(
            "inference_objective_running_requests", "requests in flight", ["model_name"]
        )
        self.ntpot = f.histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            "request latency divided by output tokens",
            model,
            NTPOT_BUCKETS,
        )
        self.scheduler_e2e = f.histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "time to schedule one request",
            (),
            SCHEDULER_BUCKETS,
        )
        self.scheduler_attempts = per_request.counter(
            "inference_extension_scheduler_attempts_total",
            "scheduling attempts by outcome",
            ["status", "target_model_name", "pod_name", "namespace", "port"],
        )
        self.plugin_duration = f.histogram(
            "inference_extension_plugin_duration_seconds",
            "time spent in each plugin",
            ["extension_point", "plugin_type", "plugin_name"],
            SCHEDULER_BUCKETS,
        )
        self.prefix_indexer_size = f.gauge(
            "inference_extension_prefix_indexer_size", "entries in the approximate prefix index"
        )
        self.prefix_hit_ratio = f.histogram(
            "inference_extension_prefix_indexer_hit_ratio",
            "matched prefix blocks / prompt blocks",
            (),
            HIT_RATIO_BUCKETS,
        )
        self.prefix_hit_bytes = f.histogram(
            "inference_extension_prefix_indexer_hit_bytes",
            "matched prefix length in bytes",
            (),
            HIT_BYTES_BUCKETS,
        )
        decision_labels = ["plugin_name", "plugin_type", "model_name", "decision_type"]
        self.pd_decisions = f.counter(
            "llm_d_epp_pd_decision_total", "prefill/decode decisions", decision_labels, alpha=False
        )
        self.disagg_decisions = f.counter(  # llm-d's newer name for the same count
            "llm_d_epp_disagg_decision_total", "disaggregation decisions", decision_labels, alpha=False
        )
        self.rollout_no_match = f.counter(  # disaggregatedset-rollout-screener (llm-d)
            "llm_d_epp_disaggregatedset_strict_header_no_match_total",
            "Strict header selections that matched no endpoint and failed closed.",
            ["plugin_type", "plugin_name", "selector"],
            alpha=False,
        )
        self.rollout_share = f.gauge(
            "llm_d_epp_disaggregatedset_revision_gating_share",
            "Current weighted revision gating share from 0 to 1; incomplete revisions have share 0.",
            ["plugin_type", "plugin_name", "mode", "revision"],
            alpha=False,
        )
        info = f.gauge("inference_extension_info", "build information", ["commit", "build_ref"])
        info.labels(commit="", build_ref=__version__).set(1)
        self.rewrite_decisions = f.counter(
            "inference_extension_model_rewrite_decisions_total",
            "requests whose model an InferenceModelRewrite changed",
            ["model_rewrite_name", "model_name", "target_model"],
        )
        self.overload_refusals = f.counter(
            "llm_d_epp_overload_refused_total",
            "new requests the EPP's overload guard answered 429, by reason",
            ["reason"],
            alpha=False,
        )
        # The gateway's rate-limit quota (epp serve --rate-limit-quota, epp.extproc.rlqs).
        self.quota_rate = f.gauge(
            "llm_d_epp_rate_limit_quota_requests_per_second",
            "requests per second the EPP assigns the gateways' rate_limit_quota filters (0: no limit)",
            alpha=False,
        )
        self.quota_streams = f.gauge(
            "llm_d_epp_rate_limit_quota_streams", "gateways' rate-limit quota streams open", alpha=False
        )
        self.quota_buckets = f.gauge(
            "llm_d_epp_rate_limit_quota_buckets",
            "buckets the gateways' rate_limit_quota filters reported, over their open streams",
            alpha=False,
        )
        self.quota_reported = f.counter(
            "llm_d_epp_rate_limit_quota_reported_requests_total",
            "requests the gateways' rate_limit_quota filters report, by outcome (allowed, denied)",
            ["outcome"],
            alpha=False,
        )
        self.request_processing = f.histogram(  # llm-d router's; the ext_proc stream observes it
            "llm_d_epp_request_processing_duration_seconds",
            "EPP request processing latency: from the request's headers until its body is handled "
            "(routed or refused), flow control's wait and admission included.",
            (),
            REQUEST_PROCESSING_BUCKETS,
        )
        self.response_processing = f.histogram(  # llm-d router's; observed when a stream closes
            "llm_d_epp_response_processing_duration_seconds",
            "EPP response processing latency: the time the EPP spent handling a response's messages.",
            (),
            RESPONSE_PROCESSING_BUCKETS,
        )
        self.latencies = ResponseLatencies(self.registry)  # llm-d's TTFT, streaming TPOT and ITL
        self.datalayer_poll_errors = f.counter(  # llm-d router's (the metrics scraper's failures)
            "llm_d_epp_datalayer_poll_errors_total",
            "Data-source poll errors per source type.",
            ["source_type"],
        )
        self.datalayer_extract_errors = f.counter(  # llm-d router's (pages its extractor would fail on)
            "llm_d_epp_datalayer_extract_errors_total",
            "Extract errors per source/extractor type.",
            ["source_type", "extractor_type"],
        )
        # llm-d router's inflight-load-producer gauges; each producer adds itself as a source.
        self.inflight_load = InFlightLoadGauges()
        self.registry.register(self.inflight_load)
        self._rewrites: dict[tuple[str, str, str], Counter] = {}
        self._series: dict[tuple[str, str], ModelSeries] = {}
        self.flow_control = FlowControlMetrics(self)
        # llm-d's per-request families, by flow too: recorded beside GIE's with llm-d's names on.
        self.flow_requests = (
            FlowRequestMetrics(self.registry, self.flow_control.flow_labels)
            if "llm-d" in self.aliases
            else None
        )
        # llm-d's prefix-indexer families, by plugin: recorded beside GIE's with llm-d's names on.
        self.prefix_indexers = PrefixIndexerMetrics(self.registry) if "llm-d" in self.aliases else None
        for name in self.aliases:
            self.registry.register(AliasCollector(self.registry, NAME_SETS[name]))

    def expose_process_metrics(self) -> None:
        """`process_*` (CPU, memory, file descriptors), as GIE's controller-runtime exports; only
        for the registry a server exposes, since it describes the whole process."""
        ProcessCollector(registry=self.registry)

    def watch_pool(self, datastore: Datastore, pool_name: str, staleness: float = 2.0) -> PoolCollector:
        collector = PoolCollector(datastore, pool_name, staleness, std_dev="llm-d" in self.aliases)
        self.registry.register(collector)
        return collector

    def prefix_index(self, plugin_name: str, plugin_type: str, size: Callable[[], float]) -> HitRecorder:
        """A prefix-index plugin's metrics: its size read when /metrics is read, and the recorder
        of its lookups, into GIE's families and, with llm-d's names, llm-d's by plugin."""
        self.prefix_indexer_size.set_function(size)
        ratio, matched = self.prefix_hit_ratio.observe, self.prefix_hit_bytes.observe
        if self.prefix_indexers is None:

            def hit(hit_ratio: float, hit_bytes: float) -> None:
                ratio(hit_ratio)
                matched(hit_bytes)

            return hit
        by_plugin = self.prefix_indexers.index(plugin_name, plugin_type, size)

        def hit_both(hit_ratio: float, hit_bytes: float) -> None:
            ratio(hit_ratio)
            matched(hit_bytes)
            by_plugin(hit_ratio, hit_bytes)

        return hit_both

    def overload_refused(self, reason: str) -> None:
        self.overload_refusals.labels(reason).inc()

    def model_rewritten(self, rewrite: str, model: str, target: str) -> None:
        """Count one rewrite decision. A generic rule matches any model a client names, so model
        names are capped as in `series`."""
        key = (rewrite, model, target)
        child = self._rewrites.get(key)
        if child is None:
            if len(model) > MAX_MODEL_NAME_LENGTH or len(self._rewrites) >= MAX_MODEL_SERIES:
                key = (rewrite, OVERFLOW_MODEL, target)
                child = self._rewrites.get(key)
            if child is None:
                child = self._rewrites[key] = self.rewrite_decisions.labels(*key)
        child.inc()

    def series(self, model: str, target: str) -> ModelSeries:
        """The labelled series of one (model, target model) pair, made once and reused (a
        `.labels()` lookup costs microseconds on every request). Model names come from clients:
        past MAX_MODEL_SERIES pairs, and for any name longer than MAX_MODEL_NAME_LENGTH, they are
        counted under OVERFLOW_MODEL, so a client inventing names (or one 16 MB name) cannot grow
        the registry or the /metrics page without bound. A request with no model keeps its empty
        label past the cap: it is counted running and finished by that label alone."""
        found = self._series.get((model, target))
        if found is None:
            too_long = max(len(model), len(target)) > MAX_MODEL_NAME_LENGTH
            if model and (too_long or len(self._series) >= MAX_MODEL_SERIES):
                model = target = OVERFLOW_MODEL
                found = self._series.get((model, target))
            if found is None:
                found = self._series[(model, target)] = ModelSeries(self, model, target)
        return found


MAX_MODEL_SERIES = 256
MAX_FAIRNESS_LABELS = 256  # distinct fairness ids labelled; later ones are counted as OVERFLOW_MODEL
# Flow control's queue-duration children: labelled by fairness id and model, each capped at 256,
# so invented pairs could make 256 x 256 of them; past this many, new ones are labelled `other`.
MAX_FLOW_SERIES = 1024
MAX_MODEL_NAME_LENGTH = 256  # above any Kubernetes name (253) or Hugging Face model id seen
# GIE's and llm-d's flow registry collects a flow idle this long (seconds) and deletes its series.
FLOW_GC_TIMEOUT = 300.0
OVERFLOW_MODEL = "other"


class ModelSeries:
    """Every per-request metric child for one (model, target model) pair."""

    __slots__ = (
        "_metrics",
        "_model",
        "_target",
        "attempts",
        "cached_tokens",
        "duration",
        "errors",
        "input_tokens",
        "ntpot",
        "output_tokens",
        "request_sizes",
        "requests",
        "response_sizes",
        "running",
    )

    def __init__(self, metrics: EppMetrics, model: str, target: str) -> None:
        self._metrics = metrics
        self._model = model
        self._target = target
        self.request_sizes = metrics.request_sizes.labels(model, target)
        self.response_sizes = metrics.response_sizes.labels(model, target)
        self.duration = metrics.duration.labels(model, target)
        self.input_tokens = metrics.input_tokens.labels(model, target)
        self.output_tokens = metrics.output_tokens.labels(model, target)
        self.cached_tokens = metrics.cached_tokens.labels(model, target)
        self.ntpot = metrics.ntpot.labels(model, target)
        self.running = metrics.running.labels(model)
        self.requests: dict[int, Counter] = {}
        self.errors: dict[str, Counter] = {}
        self.attempts: dict[tuple[str, str, int], Counter] = {}

    @property
    def model_label(self) -> str:
        return self._model

    @property
    def target_label(self) -> str:
        """The target model as this pair's labels carry it (OVERFLOW_MODEL past the caps), for
        other metrics labelled by target model."""
        return self._target

    def flow(self, fairness_id: str, priority: int) -> FlowSeries | None:
        """llm-d's children for a request of this pair and flow (None without llm-d's names)."""
        flows = self._metrics.flow_requests
        return None if flows is None else flows.series(self._model, self._target, fairness_id, priority)

    def scheduling_failed(self) -> None:
        self._metrics.scheduler_attempts.labels("failure", self._target, "", "", "").inc()

    def error(self, code: str) -> None:
        child = self.errors.get(code)
        if child is None:
            child = self.errors[code] = self._metrics.errors.labels(self._model, self._target, code)
        child.inc()

    def scheduled(self, priority: int, body_size: int, pod: str, namespace: str, port: int) -> None:
        requests = self.requests.get(priority)
        if requests is None:
            requests = self.requests[priority] = self._metrics.requests.labels(
                self._model, self._target, str(priority)
            )
        requests.inc()
        attempt = self.attempts.get((pod, namespace, port))
        if attempt is None:
            attempt = self.attempts[(pod, namespace, port)] = self._metrics.scheduler_attempts.labels(
                "success", self._target, pod, namespace, str(port)
            )
        attempt.inc()
        self.request_sizes.observe(body_size)
        if self._model:  # a body with no model (passthrough-parser) is not finished by model
            self.running.inc()

    def finished(self, latency: float, response_bytes: int, usage: Usage | None) -> None:
        record_finished(self, latency, response_bytes, usage)


FLOW_QUEUE_DURATION_BUCKETS = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
]  # fmt: skip
REVOCATION_CONFIRMATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class _Queued(Protocol):
    """What the flow-control metrics read of a queued request."""

    byte_size: int

    @property
    def request(self) -> InferenceRequest: ...


_QUEUE_DURATION_HELP = "Distribution of total time requests spend in the Flow Control layer " + (
    "(from enqueue to final outcome)."
)


# llm-d's `stage` label values of the pool saturation gauge: flow control reads the saturation
# of each stage it has endpoints for, and `effective`, the larger, gates dispatch.
STAGE_PREFILL, STAGE_DECODE, STAGE_EFFECTIVE = "prefill", "decode", "effective"

_QUEUE_LABELS = ["fairness_id", "priority", "inference_pool", "model_name", "target_model_name"]


class QueueGauges(Collector):
    """GIE's queue gauges (requests and bytes held, per flow and model), read from the flow
    controller's counts when /metrics is read. Kept as labelled Gauges, each request passing
    through an empty queue made and removed two series (~45 us, most of what flow control cost
    a request); a count is now two dict updates, and a series exists while its queue holds any."""

    def __init__(self, queued: dict[tuple[str, ...], list[int]], collected: Callable[[], None]) -> None:
        self._queued = queued
        self._collected = collected  # an idle pool's flows are collected when /metrics is read

    def collect(self) -> Iterator[Metric]:
        self._collected()
        size = GaugeMetricFamily(
            "inference_extension_flow_control_queue_size",
            alpha("Current number of requests actively held in the Flow Control queue."),
            labels=_QUEUE_LABELS,
        )
        held = GaugeMetricFamily(
            "inference_extension_flow_control_queue_bytes",
            alpha("Current total size in bytes of requests actively held in the Flow Control queue."),
            labels=_QUEUE_LABELS,
        )
        for key, (requests, size_bytes) in self._queued.items():
            size.add_metric(list(key), requests)
            held.add_metric(list(key), size_bytes)
        yield size
        yield held


class SaturationGauge(Collector):
    """The pool saturation gauge, read from the flow controller when /metrics is read. GIE's
    dispatch loop records it every cycle, queue empty or not; ours parks while nothing waits, so a
    value set by its cycles stayed at the last one with requests queued (12.0 on a pool idle for
    minutes), which autoscalers and dispatch gates reading the gauge take for a saturated pool.
    A source reads each stage present and `effective` (the value gating dispatch); GIE's name
    carries `effective` alone, llm-d's (`llm_d`: with `--metrics-aliases llm-d`) every stage."""

    def __init__(self, llm_d: bool) -> None:
        self.sources: dict[str, Callable[[], Mapping[str, float]]] = {}
        self._llm_d = llm_d

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "inference_extension_flow_control_pool_saturation",
            alpha("Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated)."),
            labels=["inference_pool"],
        )
        staged = GaugeMetricFamily(
            "llm_d_epp_flow_control_pool_saturation",
            alpha(
                "Pool saturation gating Flow Control dispatch, by stage: 'prefill' and 'decode' per "
                "stage (a series while the stage has endpoints), 'effective' the larger, which gates."
            ),
            labels=["inference_pool", "stage"],
        )
        for pool, read in self.sources.items():
            try:
                stages = read()
            except Exception:
                # A detector that raises fails neither the page (only its sample is left out) nor
                # silently: the dispatch cycle reports it (it logs and fails the queued requests).
                continue
            family.add_metric([pool], stages[STAGE_EFFECTIVE])
            for stage, value in stages.items():
                staged.add_metric([pool, stage], value)
        yield family
        if self._llm_d:
            yield staged


class FlowControlMetrics:
    """GIE's `inference_extension_flow_control_*` metrics. Fairness ids come from clients: past
    MAX_FAIRNESS_LABELS distinct ids they are labelled `other`, past MAX_FLOW_SERIES queue-duration
    series (fairness id x model) new ones are too, and a queue gauge series is removed when its
    queue empties, so invented ids and model names cannot grow /metrics without bound. As the
    upstream flow registries do, a flow (fairness id, priority) with nothing queued and no request
    for FLOW_GC_TIMEOUT has its enqueue and queue-duration series deleted (`other`'s stay: every
    capped id shares them), so /metrics follows the live tenants, not every one ever seen."""

    def __init__(self, metrics: EppMetrics) -> None:
        self._metrics = metrics
        self.clock: Callable[[], float] = time.monotonic  # of the idle-flow collection
        f = Families(metrics.registry)
        model = ["model_name", "target_model_name"]
        flow = ["fairness_id", "priority"]
        self.queue_duration = f.histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            _QUEUE_DURATION_HELP,
            [*flow, "outcome", "inference_pool", *model],
            FLOW_QUEUE_DURATION_BUCKETS,
        )
        self.dispatch_cycle = f.histogram(
            "inference_extension_flow_control_dispatch_cycle_duration_seconds",
            "Distribution of time taken for each internal dispatch cycle in the Flow Control layer.",
            (),
            SCHEDULER_BUCKETS,
        )
        self.enqueue_duration = f.histogram(
            "inference_extension_flow_control_request_enqueue_duration_seconds",
            "Distribution of time taken to enqueue requests into the Flow Control layer.",
            [*flow, "outcome"],
            SCHEDULER_BUCKETS,
        )
        self.requests_total = f.counter(  # llm-d router's, no GIE counterpart
            "llm_d_epp_flow_control_requests_total",
            "Requests that left the Flow Control layer, by final outcome.",
            ["outcome", "priority", "inference_pool"],
        )
        self.stale_endpoints = f.gauge(  # llm-d router's; set by utilization-detector
            "llm_d_epp_flow_control_stale_endpoints",
            "Candidate endpoints whose metrics were missing or stale at the detector's latest "
            "saturation reading (each scored as fully saturated).",
            ["detector"],
        )
        self._queued: dict[tuple[str, ...], list[int]] = {}  # labels -> [requests, bytes]
        metrics.registry.register(QueueGauges(self._queued, self._collect_when_due))
        self._saturation = SaturationGauge("llm-d" in metrics.aliases)
        metrics.registry.register(self._saturation)
        self._capacity = CapacityGauges()  # llm-d router's, no GIE counterpart
        metrics.registry.register(self._capacity)
        # llm-d router's in-flight eviction (flowControl.enableEviction).
        self.revocations_issued_total = f.counter(
            "llm_d_epp_flow_control_revocations_issued_total",
            "Total number of in-flight eviction revocations issued, labeled by the demand band's priority.",
            ["priority", "inference_pool"],
        )
        self.revocations_total = f.counter(
            "llm_d_epp_flow_control_revocations_total",
            "Total number of in-flight eviction revocations by terminal outcome (confirmed, timed_out).",
            ["outcome", "inference_pool"],
        )
        self.reclaim_target_gauge = f.gauge(
            "llm_d_epp_flow_control_reclaim_target",
            "Last computed reclamation deficit, in saturation-gauge units.",
            ["inference_pool"],
        )
        self.pending_reclaim_gauge = f.gauge(
            "llm_d_epp_flow_control_pending_reclaim",
            "Sum of outstanding and cooling pending-reclaim debits, in saturation-gauge units.",
            ["inference_pool"],
        )
        self.revocation_confirmation = f.histogram(
            "llm_d_epp_flow_control_revocation_confirmation_seconds",
            "Time from revocation issue to confirmed stream termination.",
            ["inference_pool"],
            REVOCATION_CONFIRMATION_BUCKETS,
        )
        self._fairness_labels: set[str] = set()
        self._children: dict[tuple[str, ...], Any] = {}  # histogram and gauge children, made once
        self._queue_series = 0  # queue-duration children made (MAX_FLOW_SERIES)
        self._flow_children: dict[tuple[str, str], list[tuple[str, ...]]] = {}  # its `_children` keys
        self._flow_seen: dict[tuple[str, str], float] = {}  # flow labels -> its last request's time
        self._next_collection = self.clock() + FLOW_GC_TIMEOUT

    def flow_labels(self, fairness_id: str, priority: int) -> tuple[str, str]:
        if fairness_id not in self._fairness_labels:
            if len(self._fairness_labels) >= MAX_FAIRNESS_LABELS or len(fairness_id) > MAX_MODEL_NAME_LENGTH:
                return OVERFLOW_MODEL, str(priority)
            self._fairness_labels.add(fairness_id)
        return fairness_id, str(priority)

    def _model_labels(self, item: _Queued) -> tuple[str, str]:
        series = self._metrics.series(item.request.model, item.request.target_model)
        return series.model_label, series.target_label

    def enqueued(self, labels: tuple[str, str], outcome: enum.Enum, seconds: float) -> None:
        key = ("enqueue", *labels, outcome.value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.enqueue_duration.labels(*key[1:])
            self._flow_children.setdefault(labels, []).append(key)
        child.observe(seconds)

    def queued(self, item: _Queued, labels: tuple[str, str], pool: str, delta: int) -> None:
        """A request in (+1) or out of (-1) its queue; a flow's series goes when its queue empties."""
        key = (*labels, pool, *self._model_labels(item))
        counts = self._queued.setdefault(key, [0, 0])
        counts[0] += delta
        counts[1] += delta * item.byte_size
        if counts[0] <= 0:
            del self._queued[key]

    def finalized(
        self, item: _Queued, labels: tuple[str, str], outcome: enum.Enum, pool: str, seconds: float
    ) -> None:
        key = ("queue", *labels, outcome.value, pool, *self._model_labels(item))
        child = self._children.get(key)
        if child is None:
            if self._queue_series < MAX_FLOW_SERIES:
                child = self._children[key] = self.queue_duration.labels(*key[1:])
                self._queue_series += 1
                self._flow_children.setdefault(labels, []).append(key)
            else:  # past the cap: one series per priority, outcome and pool, all else `other`
                other = OVERFLOW_MODEL
                key = ("queue", other, labels[1], outcome.value, pool, other, other)
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self.queue_duration.labels(*key[1:])
        child.observe(seconds)
        self.counted(labels, outcome, pool)

    def counted(self, labels: tuple[str, str], outcome: enum.Enum, pool: str) -> None:
        """One request's final outcome in flow control (`finalized` counts those that reached a
        queue or its capacity check; a request refused before, the controller stopped, too)."""
        key = ("total", outcome.value, labels[1], pool)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests_total.labels(*key[1:])
        child.inc()
        now = self.clock()
        self._flow_seen[labels] = now
        if now >= self._next_collection:
            self.collect_idle_flows(now)

    def _collect_when_due(self) -> None:
        if (now := self.clock()) >= self._next_collection:
            self.collect_idle_flows(now)

    def collect_idle_flows(self, now: float) -> None:
        """Delete the series of every flow idle for FLOW_GC_TIMEOUT: nothing of it queued, no
        request of it counted since. Run once per FLOW_GC_TIMEOUT, as GIE's collection ticker."""
        self._next_collection = now + FLOW_GC_TIMEOUT
        queued = {(key[0], key[1]) for key in self._queued}
        idle_since = now - FLOW_GC_TIMEOUT
        for flow, seen in list(self._flow_seen.items()):
            if seen > idle_since or flow in queued:
                continue
            del self._flow_seen[flow]
            if flow[0] == OVERFLOW_MODEL:
                continue
            for key in self._flow_children.pop(flow, ()):
                del self._children[key]
                if key[0] == "queue":
                    self.queue_duration.remove(*key[1:])
                    self._queue_series -= 1
                else:
                    self.enqueue_duration.remove(*key[1:])

    def watch_saturation(self, pool: str, read: Callable[[], Mapping[str, float]]) -> None:
        """The pool saturation gauges of `pool` are `read()` at each read of /metrics: a value
        per stage, `effective` among them (`FlowController.stage_saturation`)."""
        self._saturation.sources[pool] = read

    def watch_capacity(self, pool: str, read: OccupancySource) -> None:
        """The capacity utilization gauges of `pool` are `read()` at each read of /metrics."""
        self._capacity.sources[pool] = read

    def revocations_issued(self, pool: str, priority: int, count: int) -> None:
        self.revocations_issued_total.labels(str(priority), pool).inc(count)

    def revoked(self, pool: str, outcome: str, seconds: float | None) -> None:
        """An eviction's terminal outcome; `seconds` from issue to its stream's end if confirmed."""
        self.revocations_total.labels(outcome, pool).inc()
        if seconds is not None:
            self.revocation_confirmation.labels(pool).observe(seconds)

    def reclaim_target(self, pool: str, value: float) -> None:
        self.reclaim_target_gauge.labels(pool).set(value)

    def pending_reclaim(self, pool: str, value: float) -> None:
        self.pending_reclaim_gauge.labels(pool).set(value)
