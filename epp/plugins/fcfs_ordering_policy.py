"""`fcfs-ordering-policy` (GIE's default): within a flow, the request that entered the queue first
goes first."""

from __future__ import annotations

from epp.flowcontrol.queues import OrderingPolicy, QueuedRequest
from epp.framework import Plugin, register


@register
class FcfsOrderingPolicy(Plugin, OrderingPolicy):
    type_name = "fcfs-ordering-policy"

    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        return (item.enqueued,)
