"""llm-d router's in-flight load gauges (`llm_d_epp_inflight_requests`, `_inflight_tokens`), read
from every inflight-load-producer's counts when /metrics is read rather than kept as labelled
Gauges updated per request. A series exists while its count is above zero (llm-d leaves a series
at zero once it appeared)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.metrics.families import alpha

INFLIGHT_LABELS = ("endpoint_name", "namespace", "producer_name", "fairness_id", "priority")
# One series: its label values (in INFLIGHT_LABELS order), requests, tokens.
InFlightSeries = tuple[tuple[str, ...], int, int]


class InFlightLoadGauges(Collector):
    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[InFlightSeries]]] = []

    def collect(self) -> Iterator[Metric]:
        if not self.sources:
            return
        requests = GaugeMetricFamily(
            "llm_d_epp_inflight_requests",
            alpha(
                "Current number of in-flight requests per endpoint, as tracked by the in-flight load "
                "producer."
            ),
            labels=INFLIGHT_LABELS,
        )
        tokens = GaugeMetricFamily(
            "llm_d_epp_inflight_tokens",
            alpha(
                "Current number of in-flight tokens per endpoint (uncached prompt tokens, optionally plus "
                "estimated output), as tracked by the in-flight load producer."
            ),
            labels=INFLIGHT_LABELS,
        )
        for source in self.sources:
            for labels, request_count, token_count in source():
                requests.add_metric(labels, request_count)
                tokens.add_metric(labels, token_count)
        yield requests
        yield tokens
