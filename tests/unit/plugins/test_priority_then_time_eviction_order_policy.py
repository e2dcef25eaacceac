"""`priority-then-time-eviction-order-policy`: the lowest priority first, then the newest dispatch."""

from __future__ import annotations

from epp.plugins.priority_then_time_eviction_order_policy import PriorityThenTimeEvictionOrderPolicy
from tests.unit.flowcontrol.flow_helpers import in_flight
from tests.unit.plugin_helpers import plugin


async def test_lowest_priority_then_most_recently_dispatched_goes_first() -> None:
    items = [
        in_flight("old-low", -5, dispatched=1.0),
        in_flight("new-low", -5, dispatched=3.0),
        in_flight("newest-higher", -1, dispatched=9.0),
        in_flight("oldest-higher", -1, dispatched=0.5),
    ]
    order = sorted(items, key=plugin(PriorityThenTimeEvictionOrderPolicy).key)
    assert [i.request_id for i in order] == ["new-low", "old-low", "newest-higher", "oldest-higher"]
