"""`priority-then-time-eviction-order-policy` (llm-d router's eviction ordering): the lowest
priority is evicted first; between equal priorities the most recently dispatched, which has the
least KV cache invested."""

from __future__ import annotations

from epp.flowcontrol.eviction import EvictionItem, EvictionOrderingPolicy
from epp.framework import Plugin, register


@register
class PriorityThenTimeEvictionOrderPolicy(Plugin, EvictionOrderingPolicy):
    type_name = "priority-then-time-eviction-order-policy"

    def key(self, item: EvictionItem) -> tuple[float, ...]:
        return (item.priority, -item.dispatched)
