"""`slo-deadline-ordering-policy`: earliest SLO deadline first, the deadline being when the
request was received plus its `x-slo-ttft-ms` header (a non-negative integer, in milliseconds);
requests without a valid header come after every request with one; ties by arrival."""

from __future__ import annotations

from epp.flowcontrol.queues import OrderingPolicy, QueuedRequest
from epp.framework import Plugin, register

SLO_TTFT_HEADER = "x-slo-ttft-ms"
# The longest SLO llm-d takes, in milliseconds: a longer one overflows its int64 nanoseconds.
MAX_SLO_MS = (2**63 - 1) // 1_000_000
_MAX_SLO_DIGITS = len(str(MAX_SLO_MS))


def slo_deadline(item: QueuedRequest) -> float:
    text = item.request.headers.get(SLO_TTFT_HEADER, "").strip()
    # As llm-d's strconv.ParseInt: ASCII digits only (str.isdigit also takes "²", which int()
    # then refuses), within int64 nanoseconds; anything else, or negative, has no deadline.
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_SLO_DIGITS or int(text) > MAX_SLO_MS:
        return float("inf")
    return item.enqueued + int(text) / 1000.0


@register
class SloDeadlineOrderingPolicy(Plugin, OrderingPolicy):
    type_name = "slo-deadline-ordering-policy"

    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        return (slo_deadline(item), item.enqueued)
