"""`edf-ordering-policy`: earliest deadline first, the deadline being the time the request entered
the queue plus its TTL (`defaultRequestTTL` or the caller's deadline); requests without a TTL
come after every request with one; ties go first come, first served."""

from __future__ import annotations

from epp.flowcontrol.queues import OrderingPolicy, QueuedRequest
from epp.framework import Plugin, register


@register
class EdfOrderingPolicy(Plugin, OrderingPolicy):
    type_name = "edf-ordering-policy"

    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        return (item.deadline, item.enqueued)
