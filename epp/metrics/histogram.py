"""prometheus_client's Histogram with a cheaper observe, for the ones the EPP updates per request.

The library's observe checks the metric is a child, then walks the bucket bounds in a Python loop
until one fits: with GIE's 15-25 buckets that is most of its ~2.5 us, and a routed request makes
about fifteen observations (plugin durations, sizes, latencies). Here the bucket is found by
bisection; the sum and the bucket are still incremented through the library's values (their locks
included), so exposition, exemplar-free semantics and thread safety are unchanged."""

from __future__ import annotations

from bisect import bisect_left

import prometheus_client


class Histogram(prometheus_client.Histogram):
    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar or amount != amount or not hasattr(self, "_buckets"):
            # An exemplar, NaN (no bucket counts it) or a parent with labels (which raises): the
            # library's own path.
            super().observe(amount, exemplar)
            return
        self._sum.inc(amount)
        self._buckets[bisect_left(self._upper_bounds, amount)].inc(1)
