"""The bisecting Histogram, and the lock-free Counter and Gauge, expose exactly what
prometheus_client's own do for the same values."""

from __future__ import annotations

import math
import random

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from epp.metrics.families import Families
from epp.metrics.histogram import Counter, Gauge, Histogram

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


def test_exemplars_and_exposition_as_the_library_in_openmetrics() -> None:
    """Observations with an exemplar take the library's path through the lock-free values."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    library = prometheus_client.Histogram("z", "help", registry=theirs, buckets=BUCKETS)
    fast = Histogram("z", "help", registry=ours, buckets=BUCKETS)
    for value, exemplar in [
        (0.0003, {"trace_id": "a"}),
        (0.0003, None),
        (2.5, {"trace_id": "b"}),
        (7.0, None),
    ]:
        library.observe(value, exemplar)
        fast.observe(value, exemplar)

    def openmetrics(registry: CollectorRegistry) -> list[str]:
        text = prometheus_client.openmetrics.exposition.generate_latest(registry).decode()
        # an exemplar carries the time it was taken; the two were taken microseconds apart
        return [
            line.rsplit(" ", 1)[0] if "#" in line else line
            for line in text.splitlines()
            if "_created" not in line
        ]

    assert openmetrics(ours) == openmetrics(theirs)
    assert any('trace_id="b"' in line for line in openmetrics(ours))


def test_counter_and_gauge_expose_as_the_library() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    library_counter = prometheus_client.Counter("c", "help", ["a"], registry=theirs)
    library_gauge = prometheus_client.Gauge("g", "help", ["a"], registry=theirs)
    counter = Counter("c", "help", ["a"], registry=ours)
    gauge = Gauge("g", "help", ["a"], registry=ours)
    rng = random.Random(2)
    for _ in range(500):
        label, amount, down = rng.choice("pq"), rng.choice([1, 2, 0.5, 0]), rng.choice([1, 3])
        for c in (library_counter, counter):
            c.labels(label).inc(amount)
        for g in (library_gauge, gauge):
            g.labels(label).inc(amount)
            g.labels(label).dec(down)
            if amount == 2:
                g.labels(label).set(7)
    assert exposition(ours) == exposition(theirs)
    # one writer, so no lock: the children's values are the plain floats
    assert type(counter.labels("p")._value).__name__ == "_Value"
    assert type(gauge.labels("p")._value).__name__ == "_Value"


def test_counter_and_gauge_refuse_as_the_library() -> None:
    counter = Counter("c2", "help", ["a"], registry=CollectorRegistry())
    gauge = Gauge("g2", "help", ["a"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="missing label values"):
        counter.inc()
    with pytest.raises(ValueError, match="missing label values"):
        gauge.inc()
    with pytest.raises(ValueError, match="missing label values"):
        gauge.dec()
    with pytest.raises(ValueError, match="negative"):
        counter.labels("q").inc(-1)
    assert counter.labels("q")._value.get() == 0.0


def test_only_one_writer_families_are_lock_free() -> None:
    registry = CollectorRegistry()
    one_writer, others = Families(registry, one_writer=True), Families(registry)
    assert type(one_writer.counter("a", "h")) is Counter
    assert type(one_writer.gauge("b", "h")) is Gauge
    assert type(others.counter("c", "h")) is prometheus_client.Counter
    assert type(others.gauge("d", "h")) is prometheus_client.Gauge
