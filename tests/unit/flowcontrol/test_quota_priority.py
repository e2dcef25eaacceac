"""The quota's split by priority (epp.flowcontrol.quota_priority): the highest band's demand is
served first, sheddable buckets get what is left (never under the floor), buckets of one band
share by demand, and the EPP's own count of requests per objective is bounded by the objectives
it knows."""

from __future__ import annotations

import pytest

from epp.flowcontrol.quota_priority import EQUAL_SHARE, Demand, ObjectiveCounts, allot


def test_critical_demand_is_served_first_and_sheddable_buckets_get_the_rest() -> None:
    allotted = allot(100.0, [Demand("batch", -1, 500.0), Demand("chat", 1, 30.0)], floor=1.0)
    # the critical bucket may take the whole limit (a burst before its next measurement) ...
    assert allotted["chat"] == pytest.approx(100.0)
    # ... and the sheddable one gets what its measured demand leaves
    assert allotted["batch"] == pytest.approx(70.0)


def test_three_bands_each_get_what_the_ones_above_left() -> None:
    demands = [Demand("high", 10, 20.0), Demand(None, 0, 50.0), Demand("low", -5, 1000.0)]
    assert allot(100.0, demands) == pytest.approx({"high": 100.0, None: 80.0, "low": 30.0})


def test_a_sheddable_band_left_nothing_keeps_only_the_floor() -> None:
    allotted = allot(100.0, [Demand("chat", 0, 150.0), Demand("batch", -1, 500.0)], floor=1.0)
    assert allotted == pytest.approx({"chat": 100.0, "batch": 1.0})
    assert allot(100.0, [Demand("chat", 0, 150.0), Demand("batch", -1, 500.0)])["batch"] == 0.0


def test_buckets_of_one_band_share_by_demand_an_idle_one_keeping_a_part() -> None:
    """Several gateways' buckets of one objective, or objectives of one priority: as the gateways
    shared the one bucket before (mostly by demand, EQUAL_SHARE equally)."""
    allotted = allot(100.0, [Demand("a", 0, 300.0), Demand("b", 0, 100.0), Demand("idle", 0, 0.0)])
    equal = 100.0 * EQUAL_SHARE / 3
    assert allotted == pytest.approx({"a": equal + 67.5, "b": equal + 22.5, "idle": equal})
    assert sum(allotted.values()) == pytest.approx(100.0)
    assert allot(90.0, [Demand("a", 0, 0.0), Demand("b", 0, 0.0)]) == pytest.approx({"a": 45.0, "b": 45.0})


def test_one_bucket_gets_the_whole_limit_as_before() -> None:
    assert allot(250.0, [Demand("inference", 0, 900.0)]) == {"inference": 250.0}
    assert allot(250.0, []) == {}


def test_many_buckets_are_allotted_in_one_pass() -> None:
    """10,000 sheddable buckets under one critical: each gets the floor or its share of the rest,
    and the critical one the whole limit."""
    demands = [Demand(f"shed-{i}", -1, 1.0) for i in range(10_000)] + [Demand("chat", 5, 10.0)]
    allotted = allot(1000.0, demands, floor=1.0)
    assert allotted["chat"] == 1000.0
    assert len(allotted) == 10_001
    assert min(v for k, v in allotted.items() if k != "chat") == 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_epps_own_counts_are_per_known_objective_and_the_rest_together() -> None:
    clock = Clock()
    known = {"chat": 1, "batch": -1}
    counts = ObjectiveCounts(lambda: known, window=1.0, clock=clock)
    assert counts.rates() == {}
    for objective in ["chat"] * 30 + ["batch"] * 10 + [None] * 5 + [f"hostile-{i}" for i in range(1000)]:
        counts.seen(objective)
    clock.now += 0.5
    counts.sample()
    # unknown names count with the requests naming none, as the gateway's default bucket has them
    assert counts.rates() == pytest.approx({"chat": 60.0, "batch": 20.0, None: 2010.0})
    assert len(counts._counts) == 3  # bounded by the objectives the EPP knows, not by the names sent
    for _ in range(10):
        counts.seen("chat")
    clock.now += 1.0
    counts.sample()
    clock.now += 0.5
    counts.sample()
    # the window holds the last second only: the first burst is out of it
    assert counts.rates() == pytest.approx({"chat": 10 / 1.5, "batch": 0.0, None: 0.0})
