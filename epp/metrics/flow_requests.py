"""llm-d router's per-request metrics (`llm_d_epp_request_*`), labelled by the request's flow as
well as its models: llm-d-router ebab687 labels each of them by model, target model, fairness id
and priority, where GIE's carry the models only (and priority on the count). GIE's samples have
lost the flow, so these cannot be renamed from them when /metrics is read as the other llm-d names
are (`epp.metrics.aliases`): with `--metrics-aliases llm-d` each request is recorded here as well,
a few observations more per request, and nothing without it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.metrics import buckets
from epp.metrics.families import Families
from epp.metrics.histogram import Histogram
from epp.requests import Usage

LABELS = ("model_name", "target_model_name", "fairness_id", "priority")
# Model pairs and fairness ids are each capped (256), but their product is not: past this many
# label sets, new ones are counted as `other` (the priority kept: objectives are the operator's).
MAX_SERIES = 1024
OVERFLOW = "other"


class FinishedChildren(Protocol):
    """The children a finished request is recorded in: GIE's series' and llm-d's by flow."""

    duration: Histogram
    response_sizes: Histogram
    running: Gauge
    input_tokens: Histogram
    output_tokens: Histogram
    ntpot: Histogram
    cached_tokens: Histogram


def record_finished(
    children: FinishedChildren, latency: float, response_bytes: int, usage: Usage | None
) -> None:
    """A finished request: its latency, response size, running count, and its usage when known."""
    children.duration.observe(latency)
    children.response_sizes.observe(response_bytes)
    children.running.dec()
    if usage is None:
        return
    if usage.prompt_tokens > 0:
        children.input_tokens.observe(usage.prompt_tokens)
    if usage.completion_tokens > 0:
        children.output_tokens.observe(usage.completion_tokens)
        children.ntpot.observe(latency / usage.completion_tokens)
    children.cached_tokens.observe(usage.cached_tokens)


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
        self.running = families.running.labels(*labels)
        children = {attribute: h.labels(*labels) for attribute, h in families.histograms.items()}
        self.request_sizes = children["request_sizes"]
        self.duration = children["duration"]
        self.response_sizes = children["response_sizes"]
        self.input_tokens = children["input_tokens"]
        self.output_tokens = children["output_tokens"]
        self.cached_tokens = children["cached_tokens"]
        self.ntpot = children["ntpot"]

    def scheduled(self, body_size: int) -> None:
        self.requests.inc()
        self.request_sizes.observe(body_size)
        if self._labels[0]:  # as GIE's series: no model, not counted running (nor finished)
            self.running.inc()

    def finished(self, latency: float, response_bytes: int, usage: Usage | None) -> None:
        record_finished(self, latency, response_bytes, usage)

    def error(self, code: str) -> None:
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = self._families.errors.labels(*self._labels, code)
        child.inc()


# llm-d's per-request histograms: attribute -> (name, help, buckets); labelled LABELS.
HISTOGRAMS: dict[str, tuple[str, str, Sequence[float]]] = {
    "duration": (
        "llm_d_epp_request_duration_seconds",
        "End-to-end request latency through the EPP, in seconds.",
        buckets.DURATION_BUCKETS,
    ),
    "request_sizes": (
        "llm_d_epp_request_size_bytes",
        "Request body size in bytes.",
        buckets.REQUEST_SIZE_BUCKETS,
    ),
    "response_sizes": (
        "llm_d_epp_response_size_bytes",
        "Response body size in bytes.",
        buckets.RESPONSE_SIZE_BUCKETS,
    ),
    "input_tokens": (
        "llm_d_epp_request_input_tokens",
        "Prompt tokens per request.",
        buckets.INPUT_TOKEN_BUCKETS,
    ),
    "output_tokens": (
        "llm_d_epp_request_output_tokens",
        "Completion tokens per request.",
        buckets.OUTPUT_TOKEN_BUCKETS,
    ),
    "cached_tokens": (
        "llm_d_epp_request_cached_tokens",
        "Prompt tokens the model server reported read from its cache, per request.",
        buckets.INPUT_TOKEN_BUCKETS,
    ),
    "ntpot": (
        "llm_d_epp_request_ntpot_seconds",
        "Request latency divided by its output tokens, in seconds.",
        buckets.NTPOT_BUCKETS,
    ),
}


class FlowRequestMetrics:
    """llm-d's `llm_d_epp_request_*` families. `flow_labels` bounds a request's fairness id and
    priority as flow control's metrics do (`FlowControlMetrics.flow_labels`: 256 distinct ids,
    then `other`), so a client inventing ids labels the same way in both."""

    def __init__(
        self, registry: CollectorRegistry, flow_labels: Callable[[str, int], tuple[str, str]]
    ) -> None:
        f = Families(registry, alpha=False)
        per_request = Families(registry, alpha=False, one_writer=True)  # the director's, on the loop
        self.requests: Counter = per_request.counter(
            "llm_d_epp_request_total", "Total number of processed requests.", LABELS
        )
        self.errors: Counter = f.counter(
            "llm_d_epp_request_error_total", "Total number of request errors.", [*LABELS, "error_code"]
        )
        self.running: Gauge = per_request.gauge("llm_d_epp_request_running", "Requests in flight.", LABELS)
        self.histograms: dict[str, Histogram] = {
            attribute: f.histogram(name, help_text, LABELS, bounds)
            for attribute, (name, help_text, bounds) in HISTOGRAMS.items()
        }
        self._flow_labels = flow_labels
        self._series: dict[tuple[str, str, str, str], FlowSeries] = {}

    def series(self, model: str, target: str, fairness_id: str, priority: int) -> FlowSeries:
        """The children for a request of these (already capped) model labels and this flow."""
        fairness, priority_label = self._flow_labels(fairness_id, priority)
        key = (model, target, fairness, priority_label)
        found = self._series.get(key)
        if found is None:
            if len(self._series) >= MAX_SERIES:  # a request with no model keeps its empty labels
                overflow = OVERFLOW if model else ""
                key = (overflow, overflow, OVERFLOW, priority_label)
                found = self._series.get(key)
            if found is None:
                found = self._series[key] = FlowSeries(self, key)
        return found
