"""`slo-deadline-ordering-policy`: earliest SLO deadline first, the deadline being when the
request was received plus its `x-slo-ttft-ms` header (a non-negative integer, in milliseconds);
requests without a valid header come after every request with one; ties by arrival."""

from __future__ import annotations

from epp.flowcontrol.queues import OrderingPolicy, QueuedRequest
from epp.framework import Plugin, register

SLO_TTFT_HEADER = "x-slo-ttft-ms"


def slo_deadline(item: QueuedRequest) -> float:
    text = item.request.headers.get(SLO_TTFT_HEADER, "").strip()
    if not text.isdigit():  # GIE: unparsable or negative → no deadline
        return float("inf")
    return item.enqueued + int(text) / 1000.0


@register
class SloDeadlineOrderingPolicy(Plugin, OrderingPolicy):
    type_name = "slo-deadline-ordering-policy"

    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        return (slo_deadline(item), item.enqueued)
