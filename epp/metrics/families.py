"""Metric families made from one row each (name, help, labels, buckets), so a metric set reads as
a table: GIE's families carry its `[ALPHA]` help prefix, llm-d's and the EPP's own do not."""

from __future__ import annotations

from collections.abc import Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.metrics import histogram
from epp.metrics.histogram import Histogram


def alpha(text: str) -> str:
    """GIE's help text of an alpha metric."""
    return f"[ALPHA] {text}"


class Families:
    """Registers families in `registry` (None: not registered, for an unexported set), each name
    after `prefix`, with GIE's alpha help prefix unless `alpha` is False (or a row says otherwise).
    `one_writer`: only the event loop's thread updates these counters and gauges, so their values
    take no lock (`epp.metrics.histogram.Counter` / `Gauge`)."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        *,
        prefix: str = "",
        alpha: bool = True,
        one_writer: bool = False,
    ) -> None:
        self.registry = registry
        self.prefix = prefix
        self.alpha = alpha
        self._counter = histogram.Counter if one_writer else Counter
        self._gauge = histogram.Gauge if one_writer else Gauge

    def _help(self, text: str, row_alpha: bool | None) -> str:
        return alpha(text) if (self.alpha if row_alpha is None else row_alpha) else text

    def counter(
        self, name: str, help_text: str, labels: Sequence[str] = (), alpha: bool | None = None
    ) -> Counter:
        return self._counter(self.prefix + name, self._help(help_text, alpha), labels, registry=self.registry)

    def gauge(
        self, name: str, help_text: str, labels: Sequence[str] = (), alpha: bool | None = None
    ) -> Gauge:
        return self._gauge(self.prefix + name, self._help(help_text, alpha), labels, registry=self.registry)

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = prometheus_client.Histogram.DEFAULT_BUCKETS,
        alpha: bool | None = None,
    ) -> Histogram:
        text = self._help(help_text, alpha)
        return Histogram(self.prefix + name, text, labels, buckets=buckets, registry=self.registry)
