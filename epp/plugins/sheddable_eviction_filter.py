"""`sheddable-eviction-filter` (llm-d router's eviction filter): only sheddable requests (priority
below zero) may be evicted in flight; requests of priority zero and above never are."""

from __future__ import annotations

from epp.flowcontrol.eviction import EvictionFilterPolicy, EvictionItem
from epp.framework import Plugin, register


@register
class SheddableEvictionFilter(Plugin, EvictionFilterPolicy):
    type_name = "sheddable-eviction-filter"

    def accept(self, item: EvictionItem) -> bool:
        return item.priority < 0
