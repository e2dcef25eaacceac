"""llm-d router's response latencies, read from a response's body chunks as they pass the EPP:
time to first token (from the request's arrival to its first response byte), and for a streamed
response (the request's `stream` field or an SSE response, as llm-d's `streaming`) the time per
output token after the first and the gap between chunks. The EPP
sees a streamed response's chunks only when it reads them (`--read-streamed-responses`, or a
FULL_DUPLEX_STREAMED response, or a plugin that asks); a response whose chunks it skips has none
of these. No GIE counterpart: always exported under llm-d's names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from epp.metrics.families import Families

TTFT_BUCKETS = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60,
    120,
]  # fmt: skip
TPOT_BUCKETS = [
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8,
    1, 2,
]  # fmt: skip
ITL_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2]
LABELS = ("model_name", "target_model_name", "fairness_id", "priority")
# Label sets are made from capped model names and fairness ids (256 each), whose product could
# still be large: past this many, new ones are counted as `other`.
MAX_SERIES = 1024
OVERFLOW = "other"


class ResponseTiming:
    """The histogram children of one label set (model, target model, fairness id, priority,
    whether the response streamed), each made at its first observation (as llm-d's series)."""

    __slots__ = ("_itl", "_labels", "_latencies", "_streaming", "_tpot", "_ttft")

    def __init__(self, latencies: ResponseLatencies, labels: tuple[str, ...], streaming: bool) -> None:
        self._latencies = latencies
        self._labels = labels
        self._streaming = "true" if streaming else "false"
        self._ttft: Histogram | None = None
        self._tpot: Histogram | None = None
        self._itl: Histogram | None = None

    def ttft(self, seconds: float) -> None:
        if self._ttft is None:
            self._ttft = self._latencies.ttft.labels(*self._labels, self._streaming)
        self._ttft.observe(seconds)

    def tpot(self, seconds: float) -> None:
        if self._tpot is None:
            self._tpot = self._latencies.tpot.labels(*self._labels)
        self._tpot.observe(seconds)

    def itl(self, seconds: float) -> None:
        if self._itl is None:
            self._itl = self._latencies.itl.labels(*self._labels)
        self._itl.observe(seconds)


class ResponseLatencies:
    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry)
        self.ttft: Histogram = f.histogram(
            "llm_d_epp_request_ttft_seconds",
            "Time to first token: from the request's arrival to its response's first byte "
            "(a whole response's, when it is not streamed).",
            [*LABELS, "streaming"],
            TTFT_BUCKETS,
        )
        self.tpot: Histogram = f.histogram(
            "llm_d_epp_request_streaming_tpot_seconds",
            "Average time per output token of a streamed response: "
            "(end - first token) / (output tokens - 1).",
            LABELS,
            TPOT_BUCKETS,
        )
        self.itl: Histogram = f.histogram(
            "llm_d_epp_request_streaming_itl_seconds",
            "Time between consecutive body chunks of a streamed response.",
            LABELS,
            ITL_BUCKETS,
        )
        self._timings: dict[tuple[str, ...], ResponseTiming] = {}

    def timing(self, labels: tuple[str, str, str, str], streaming: bool) -> ResponseTiming:
        """The children for these labels, made once (MAX_SERIES label sets at most)."""
        key = (*labels, "true" if streaming else "false")
        found = self._timings.get(key)
        if found is None:
            if len(self._timings) >= MAX_SERIES:
                labels = (OVERFLOW, OVERFLOW, OVERFLOW, labels[3])
                key = (*labels, key[-1])
                found = self._timings.get(key)
            if found is None:
                found = self._timings[key] = ResponseTiming(self, labels, streaming)
        return found
