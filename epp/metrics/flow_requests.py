"""llm-d router's per-request metrics (`llm_d_epp_request_*`), labelled by the request's flow as
well as its models: llm-d-router ebab687 labels each of them by model, target model, fairness id
and priority, where GIE's carry the models only (and priority on the count). GIE's samples have
lost the flow, so these cannot be renamed from them when /metrics is read as the other llm-d names
are (`epp.metrics.aliases`): with `--metrics-aliases llm-d` each request is recorded here as well,
a few observations more per request, and nothing without it."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from epp.metrics import buckets
from epp.metrics.families import Families
from epp.requests import Usage

LABELS = ("model_name", "target_model_name", "fairness_id", "priority")
# Model pairs and fairness ids are each capped (256), but their product is not: past this many
# label sets, new ones are counted as `other` (the priority kept: objectives are the operator's).
MAX_SERIES = 1024
OVERFLOW = "other"


class FlowSeries:
    """The children of one label set (model, target model, fairness id, priority), made once."""

    __slots__ = (
        "_errors",
        "_families",
        "_labels",
        "cached_tokens",
        "duration",
        "input_tokens",
        "ntpot",
        "output_tokens",
        "request_sizes",
        "requests",
        "response_sizes",
        "running",
    )

    def __init__(self, families: FlowRequestMetrics, labels: tuple[str, str, str, str]) -> None:
        self._families = families
        self._labels = labels
        self._errors: dict[str, Counter] = {}
        self.requests = families.requests.labels(*labels)
        self.request_sizes = families.request_sizes.labels(*labels)
        self.running = families.running.labels(*labels)
        self.duration = families.duration.labels(*labels)
        self.response_sizes = families.response_sizes.labels(*labels)
        self.input_tokens = families.input_tokens.labels(*labels)
        self.output_tokens = families.output_tokens.labels(*labels)
        self.cached_tokens = families.cached_tokens.labels(*labels)
        self.ntpot = families.ntpot.labels(*labels)

    def scheduled(self, body_size: int) -> None:
        self.requests.inc()
        self.request_sizes.observe(body_size)
        if self._labels[0]:  # as GIE's series: no model, not counted running (nor finished)
            self.running.inc()

    def finished(self, latency: float, response_bytes: int, usage: Usage | None) -> None:
        """As GIE's series records a finished request (`ModelSeries.finished`)."""
        self.duration.observe(latency)
        self.response_sizes.observe(response_bytes)
        self.running.dec()
        if usage is None:
            return
        if usage.prompt_tokens > 0:
            self.input_tokens.observe(usage.prompt_tokens)
        if usage.completion_tokens > 0:
            self.output_tokens.observe(usage.completion_tokens)
            self.ntpot.observe(latency / usage.completion_tokens)
        self.cached_tokens.observe(usage.cached_tokens)

    def error(self, code: str) -> None:
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = self._families.errors.labels(*self._labels, code)
        child.inc()


class FlowRequestMetrics:
    """llm-d's `llm_d_epp_request_*` families. `flow_labels` bounds a request's fairness id and
    priority as flow control's metrics do (`FlowControlMetrics.flow_labels`: 256 distinct ids,
    then `other`), so a client inventing ids labels the same way in both."""

    def __init__(
        self, registry: CollectorRegistry, flow_labels: Callable[[str, int], tuple[str, str]]
    ) -> None:
        f = Families(registry, alpha=False)
        self.requests: Counter = f.counter(
            "llm_d_epp_request_total", "Total number of processed requests.", LABELS
        )
        self.errors: Counter = f.counter(
            "llm_d_epp_request_error_total", "Total number of request errors.", [*LABELS, "error_code"]
        )
        self.duration: Histogram = f.histogram(
            "llm_d_epp_request_duration_seconds",
            "End-to-end request latency through the EPP, in seconds.",
            LABELS,
            buckets.DURATION_BUCKETS,
        )
        self.request_sizes: Histogram = f.histogram(
            "llm_d_epp_request_size_bytes",
            "Request body size in bytes.",
            LABELS,
            buckets.REQUEST_SIZE_BUCKETS,
        )
        self.response_sizes: Histogram = f.histogram(
            "llm_d_epp_response_size_bytes",
            "Response body size in bytes.",
            LABELS,
            buckets.RESPONSE_SIZE_BUCKETS,
        )
        self.input_tokens: Histogram = f.histogram(
            "llm_d_epp_request_input_tokens",
            "Prompt tokens per request.",
            LABELS,
            buckets.INPUT_TOKEN_BUCKETS,
        )
        self.output_tokens: Histogram = f.histogram(
            "llm_d_epp_request_output_tokens",
            "Completion tokens per request.",
            LABELS,
            buckets.OUTPUT_TOKEN_BUCKETS,
        )
        self.cached_tokens: Histogram = f.histogram(
            "llm_d_epp_request_cached_tokens",
            "Prompt tokens the model server reported read from its cache, per request.",
            LABELS,
            buckets.INPUT_TOKEN_BUCKETS,
        )
        self.running: Gauge = f.gauge("llm_d_epp_request_running", "Requests in flight.", LABELS)
        self.ntpot: Histogram = f.histogram(
            "llm_d_epp_request_ntpot_seconds",
            "Request latency divided by its output tokens, in seconds.",
            LABELS,
            buckets.NTPOT_BUCKETS,
        )
        self._flow_labels = flow_labels
        self._series: dict[tuple[str, str, str, str], FlowSeries] = {}

    def series(self, model: str, target: str, fairness_id: str, priority: int) -> FlowSeries:
        """The children for a request of these (already capped) model labels and this flow."""
        fairness, priority_label = self._flow_labels(fairness_id, priority)
        key = (model, target, fairness, priority_label)
        found = self._series.get(key)
        if found is None:
            if len(self._series) >= MAX_SERIES:
                key = (OVERFLOW, OVERFLOW, OVERFLOW, priority_label)
                found = self._series.get(key)
            if found is None:
                found = self._series[key] = FlowSeries(self, key)
        return found
