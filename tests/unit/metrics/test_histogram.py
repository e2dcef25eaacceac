"""The bisecting Histogram exposes exactly what prometheus_client's own does for the same values."""

from __future__ import annotations

import math
import random

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from epp.metrics.histogram import Histogram

BUCKETS = [0.0001 * 2**i for i in range(20)]


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_same_buckets_sum_and_count_as_the_library() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    library = prometheus_client.Histogram("x", "help", ["a"], registry=theirs, buckets=BUCKETS)
    fast = Histogram("x", "help", ["a"], registry=ours, buckets=BUCKETS)
    rng = random.Random(1)
    edges = [0.0, -1.0, 0.0001, 0.0002, BUCKETS[-1], 1e9, math.inf, math.nan]
    values = edges + [rng.expovariate(100) for _ in range(2000)]
    for value in values:
        library.labels("q").observe(value)
        fast.labels("q").observe(value)
    assert exposition(ours) == exposition(theirs)
    assert f'x_count{{a="q"}} {float(len(values) - 1)}' in exposition(ours)  # NaN counts in no bucket


def test_a_labelled_parent_still_refuses_observations() -> None:
    fast = Histogram("y", "help", ["a"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="missing label values"):
        fast.observe(1.0)
