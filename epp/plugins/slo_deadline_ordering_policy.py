"""`slo-deadline-ordering-policy`: earliest SLO deadline first, the deadline being when the
request was received plus its `x-llm-d-slo-ttft-ms` header, else its `x-slo-ttft-ms` (llm-d's
deprecated name for it), in milliseconds (ASCII digits); requests without a valid header come
after every request with one; ties by arrival."""

from __future__ import annotations

from epp.flowcontrol.queues import OrderingPolicy, QueuedRequest
from epp.framework import Plugin, register
from epp.headers import either_header

SLO_TTFT_HEADER = "x-slo-ttft-ms"
# llm-d-router's name (ebab687, metadata/consts.go), read first: it keeps ours as the deprecated alias.
LLMD_SLO_TTFT_HEADER = "x-llm-d-slo-ttft-ms"
# The longest SLO llm-d takes, in milliseconds: a longer one overflows its int64 nanoseconds.
MAX_SLO_MS = (2**63 - 1) // 1_000_000
_MAX_SLO_DIGITS = len(str(MAX_SLO_MS))


def slo_deadline(item: QueuedRequest) -> float:
    text = (either_header(item.request.headers, LLMD_SLO_TTFT_HEADER, SLO_TTFT_HEADER) or "").strip()
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
