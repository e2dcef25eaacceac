"""The eviction bookkeeping (RequestEvictor) and llm-d router's reclamation rules: sizing against
the deficit, the victim priority bound, stop-and-wait pacing with a grace and a timeout."""

from __future__ import annotations

import pytest

from epp.flowcontrol.eviction import RequestEvictor
from epp.flowcontrol.reclamation import (
    CONFIRMATION_TIMEOUT,
    ENGINE_RECLAIM_BUDGET,
    LEADING_SENSOR_GRACE,
    ReclamationController,
    eviction_grace,
)
from epp.metrics.exporter import EppMetrics
from epp.plugins.priority_then_time_eviction_order_policy import PriorityThenTimeEvictionOrderPolicy
from epp.plugins.sheddable_eviction_filter import SheddableEvictionFilter
from tests.unit.flowcontrol.flow_helpers import queued_request
from tests.unit.plugin_helpers import FakeClock, plugin


def evictor(clock: FakeClock) -> RequestEvictor:
    return RequestEvictor(plugin(PriorityThenTimeEvictionOrderPolicy), plugin(SheddableEvictionFilter), clock)


def controller(clock: FakeClock, queued: bool = True) -> tuple[ReclamationController, EppMetrics]:
    metrics = EppMetrics()
    reclamation = ReclamationController(
        evictor(clock), lambda priority: queued, "concurrency-detector", metrics.flow_control, "pool", clock
    )
    return reclamation, metrics


async def test_victims_go_lowest_priority_first_then_newest_and_never_at_the_bound() -> None:
    clock = FakeClock(0.0)
    tracker = evictor(clock)
    for name, priority in (("old-2", -2), ("old-1", -1), ("keep", 0), ("new-2", -2)):
        clock.now += 1
        tracker.track(queued_request(name, "t", priority), "10.0.0.1:8000")
    assert len(tracker.in_flight) == 4 and tracker.evictable == 3  # priority 0 is not sheddable
    assert tracker.victim_priority() == -2
    assert tracker.evict(5, priority_bound=-1) == ["new-2", "old-2"]  # -1 is not below the bound
    assert tracker.evict(5, priority_bound=0) == ["old-1"]
    assert tracker.victim_priority() is None and set(tracker.in_flight) == {"keep"}


async def test_untracking_a_request_removes_it_and_confirms_only_evicted_ones() -> None:
    clock = FakeClock(0.0)
    tracker = evictor(clock)
    confirmed: list[str] = []
    tracker.on_terminated = confirmed.append
    items = []
    for i in range(3):
        clock.now += 1
        items.append(tracker.track(queued_request(f"r{i}", "t", -1), "h:1"))
    assert all(item is not None and item.evictable for item in items)
    tracker.untrack("r0")  # completed
    assert tracker.evict(1, 0) == ["r2"]  # the newest
    assert items[2] is not None and items[2].signal.done()
    tracker.untrack("r2")  # its stream ended
    tracker.untrack("r2")
    assert confirmed == ["r2"]
    assert tracker.evictable == 1 and tracker.victim_priority() == -1
    assert tracker.track(queued_request("", "t", -1), "h:1") is None  # no id: not tracked


async def test_sizing_evicts_enough_to_cover_the_deficit_capped_at_two() -> None:
    clock = FakeClock(0.0)
    reclamation, metrics = controller(clock)
    for i in range(4):
        reclamation.evictor.track(queued_request(f"r{i}", "t", -1), "h:1")
    # credit = 1.2 / 4 = 0.3; target = 1.2 - 0.5 = 0.7 -> ceil(2.33) = 3 -> capped at 2
    assert len(reclamation.reclaim(1.2, 0.5, demand_priority=0)) == 2
    assert reclamation.pending == pytest.approx(0.6)
    sample = metrics.registry.get_sample_value
    assert sample("llm_d_epp_flow_control_reclaim_target", {"inference_pool": "pool"}) == pytest.approx(0.7)
    assert sample("llm_d_epp_flow_control_pending_reclaim", {"inference_pool": "pool"}) == pytest.approx(0.6)
    assert sample(
        "llm_d_epp_flow_control_revocations_issued_total", {"priority": "0", "inference_pool": "pool"}
    ) == (2.0)


async def test_pacing_waits_for_confirmation_then_the_grace() -> None:
    clock = FakeClock(0.0)
    reclamation, metrics = controller(clock)
    for i in range(3):
        reclamation.evictor.track(queued_request(f"r{i}", "t", -1), "h:1")
    reclamation.consider(1.0, [10, -1], [1.0, 1.0], blocked=0)
    assert len(reclamation.outstanding) == 1
    reclamation.consider(1.0, [10, -1], [1.0, 1.0], blocked=0)  # gate shut: nothing more
    assert len(reclamation.outstanding) == 1 and reclamation.evictor.evictable == 2
    (victim,) = reclamation.outstanding
    clock.now += 0.5
    reclamation.evictor.untrack(victim)  # its stream ended: confirmed, cooling for the grace
    assert not reclamation.gate_open(clock.now)
    clock.now += LEADING_SENSOR_GRACE
    assert reclamation.gate_open(clock.now) and reclamation.pending == 0.0
    sample = metrics.registry.get_sample_value
    labels = {"inference_pool": "pool"}
    assert sample("llm_d_epp_flow_control_revocation_confirmation_seconds_sum", labels) == 0.5


async def test_an_unconfirmed_eviction_times_out() -> None:
    clock = FakeClock(0.0)
    reclamation, metrics = controller(clock)
    reclamation.evictor.track(queued_request("hung", "t", -1), "h:1")
    reclamation.consider(1.0, [10, -1], [1.0, 1.0], blocked=0)
    clock.now += CONFIRMATION_TIMEOUT
    assert not reclamation.gate_open(clock.now)  # timed out, now cooling
    clock.now += LEADING_SENSOR_GRACE
    assert reclamation.gate_open(clock.now)
    assert metrics.registry.get_sample_value(
        "llm_d_epp_flow_control_revocations_total", {"outcome": "timed_out", "inference_pool": "pool"}
    ) == (1.0)


@pytest.mark.parametrize(
    ("priorities", "ceilings", "queued"),
    [
        ([10, -1], [0.0, 0.0], True),  # a zero ceiling never opens, whatever is freed
        ([10, -1], [1.0, 1.0], False),  # nothing waits
        ([-1, -2], [1.0, 1.0], True),  # the waiting band does not outrank the victim
    ],
)
async def test_no_eviction_when_it_cannot_help(
    priorities: list[int], ceilings: list[float], queued: bool
) -> None:
    clock = FakeClock(0.0)
    reclamation, _ = controller(clock, queued)
    reclamation.evictor.track(queued_request("r", "t", -1), "h:1")
    reclamation.consider(1.0, priorities, ceilings, blocked=0)
    assert reclamation.outstanding == {}


def test_grace_follows_the_saturation_detector() -> None:
    assert eviction_grace("concurrency-detector", 0.05, 2.0) == LEADING_SENSOR_GRACE
    assert eviction_grace("utilization-detector", 0.05, 2.0) == 0.05 + 2.0 + ENGINE_RECLAIM_BUDGET


async def test_a_reused_request_id_tracks_only_the_first_and_its_end_leaves_the_other_alone() -> None:
    clock = FakeClock(0.0)
    tracker = evictor(clock)
    confirmed: list[str] = []
    tracker.on_terminated = confirmed.append
    first = tracker.track(queued_request("dup", "t", -1), "h:1")
    second = tracker.track(queued_request("dup", "t", -1), "h:2")  # same x-request-id, in flight
    assert first is not None and second is None
    assert len(tracker.in_flight) == 1 and tracker.evictable == 1
    assert tracker.evict(5, 0) == ["dup"]
    assert confirmed == []  # the evicted stream has not ended: nothing confirmed early
    tracker.untrack("dup")
    assert confirmed == ["dup"] and tracker.evictable == 0


async def test_a_reused_id_is_not_tracked_while_the_evicted_one_awaits_its_end() -> None:
    tracker = evictor(FakeClock(0.0))
    confirmed: list[str] = []
    tracker.on_terminated = confirmed.append
    first = tracker.track(queued_request("dup", "t", -1), "h:1")
    assert first is not None and tracker.evict(1, 0) == ["dup"]
    assert tracker.track(queued_request("dup", "t", -1), "h:2") is None
    assert confirmed == []
    tracker.release(first)
    assert confirmed == ["dup"]
