"""Overload protection of the EPP itself. Past its own capacity a Python EPP gets slower for
everyone: every ext_proc message waits behind the others on the event loop, until Envoy's
message timeout turns requests into 504s. The guard sheds instead, as a new request's ext_proc
call arrives, before any of its messages is read: it is refused at once (429 with Retry-After)
while the EPP holds `max_streams` ext_proc streams, or while its event loop lags more than
`max_lag` behind. The lag counts as sustained only when two measurements in a row are over the
limit: one late measurement is one long callback or garbage-collection pause that is over by the
time it is measured, and refusing on it would turn away the requests of the next interval for a
loop that already caught up.
Requests admitted before go on; health answers (another gRPC service) are never refused; it
recovers at the first measurement below the limit.

Under overload the backlog sits mostly before the event loop (in gRPC core and in Envoy), where
neither the lag nor the stream count sees it; so a request is also refused at its request headers
when it already waited more than `max_wait` since the gateway received it (Envoy's `request.time`
attribute, a wall clock compared with this host's), and, with a `standing` controller, when it
waited past that controller's small target while a queue stands (epp.flowcontrol.standing_queue):
the bound is the ceiling, the controller keeps the queue short below it.

With `by_priority` (the gateway's rate-limit quota by objective: Envoy refuses the sheddable
excess, so what reaches the EPP is mostly what it serves), while a sheddable request (GIE's
priority < 0) reached the EPP within the controller's interval, the controller reads every request
before shedding it, none unread, and sheds the sheddable ones first: a request of priority 0 or
more that waited past the target is admitted (there is a lower band to shed instead), as GIE's
flow control sheds only the sheddable band, but only for one more interval of the standing queue:
a queue that shedding the sheddable requests has not drained by then is the others' (a trickle of
sheddable requests beside an excess of critical ones), and they are shed too until it drains.
With no sheddable request for an interval, it sheds as without (every band alike, most unread).
The `max_wait` ceiling holds for every priority."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from epp.flowcontrol.standing_queue import RETRY_AFTER_SECONDS, StandingQueue
from epp.requests import ErrorCode, RequestError
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

LAG_INTERVAL = 0.025  # seconds between event-loop lag measurements

# Reasons of a refusal, the `reason` label of the refusal count.
STREAMS = "concurrent_streams"
LAG = "event_loop_lag"
QUEUE_WAIT = "queue_wait"
STANDING_QUEUE = "standing_queue"


def _uncounted(reason: str) -> None:
    return None


class OverloadGuard:
    def __init__(
        self,
        max_streams: int = 0,
        max_lag: float = 0.0,
        max_wait: float = 0.0,
        count: Callable[[str], None] = _uncounted,
        standing: StandingQueue | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_streams = max_streams  # 0: no limit
        self.max_lag = max_lag  # seconds; 0: not measured
        self.max_wait = max_wait  # seconds; 0: not checked
        self._count = count  # called with the reason of each refusal
        self.standing = standing  # None: only the max_wait bound
        self.streams = 0
        self.last = 0.0  # seconds: the last measurement
        self.lag = 0.0  # the sustained lag: the lower of the last two measurements
        self.refused = 0
        self.admitted = 0  # requests whose wait was read and that were let through
        self.by_priority = False  # read each request and shed sheddable ones first (module docstring)
        self._clock = clock
        self._sheddable_until = float("-inf")  # a sheddable request was seen: others spared till then
        self._sparing_since: float | None = None  # late requests of priority >= 0 spared since then
        self._task: asyncio.Task[None] | None = None

    def admit(self) -> RequestError | None:
        """Refuse a new request before any of its messages is read, or None to admit it: past the
        stream limit, while the event loop lags, and while a standing queue is shed, all but one
        request per target (whose wait, read from its first message, says whether the queue
        still stands). Under a standing queue the requests come out of it in arrival order, so
        a refused one waited about as long as the last one read, and not reading it saves
        a third of a refusal's cost."""
        if self.max_streams and self.streams >= self.max_streams:
            return self._refuse(
                STREAMS,
                f"the endpoint picker is at its limit of {self.max_streams} concurrent requests "
                "(--max-concurrent-streams); retry later",
            )
        if self.max_lag and self.lag > self.max_lag:
            return self._refuse(
                LAG,
                f"the endpoint picker is overloaded: its event loop lags {self.lag * 1000:.0f} ms, "
                f"over its limit of {self.max_lag * 1000:.0f} ms (--max-event-loop-lag); retry later",
            )
        standing = self.standing
        if (
            standing is not None
            and standing.shedding
            and not self._reads_first()
            and not standing.sample_due()
        ):
            return self._shed(standing)
        return None

    def _reads_first(self) -> bool:
        """Whether a request is to be read before it is shed: `by_priority`, while sheddable
        requests reach the EPP (the request's band decides)."""
        return self.by_priority and self._clock() < self._sheddable_until

    def enter(self) -> None:
        """An admitted stream begins (the caller must `leave` it once)."""
        self.streams += 1

    def leave(self) -> None:
        self.streams -= 1

    def waited(self, seconds: float, sheddable: bool = True) -> RequestError | None:
        """Refuse an admitted request that waited `seconds` before the EPP saw it, if too long.
        `sheddable`: its priority is below 0 (read only `by_priority`)."""
        standing = self.standing
        late = standing is not None and standing.shed(seconds)  # the controller sees every wait
        if self.by_priority and standing is not None:
            late = self._late_by_priority(late, sheddable, standing)
        if self.max_wait and seconds > self.max_wait:
            return self._refuse(
                QUEUE_WAIT,
                f"the endpoint picker is overloaded: the request waited {seconds * 1000:.0f} ms "
                f"before it reached it, over its limit of {self.max_wait * 1000:.0f} ms "
                "(--max-queue-wait); retry later",
            )
        if late and standing is not None:
            return self._shed(standing)
        self.admitted += 1
        return None

    def _late_by_priority(self, late: bool, sheddable: bool, standing: StandingQueue) -> bool:
        """Whether a request the controller found `late` is shed, by priority: one of priority 0
        or more is spared while sheddable ones reach the EPP, for one interval of the standing
        queue at most (module docstring)."""
        now = self._clock()
        if not standing.shedding:
            self._sparing_since = None  # the queue drained: the next one starts sparing anew
        if sheddable:
            self._sheddable_until = now + standing.interval
            return late
        if not late or now >= self._sheddable_until:
            return late
        if self._sparing_since is None:
            self._sparing_since = now
        return now - self._sparing_since >= standing.interval

    @property
    def checks_wait(self) -> bool:
        """Whether a request's wait before the EPP is looked at at all."""
        return bool(self.max_wait) or self.standing is not None

    def _shed(self, standing: StandingQueue) -> RequestError:
        self.refused += 1
        self._count(STANDING_QUEUE)
        return standing.refusal

    def _refuse(self, reason: str, message: str) -> RequestError:
        self.refused += 1
        self._count(reason)
        return RequestError(ErrorCode.RESOURCE_EXHAUSTED, message, retry_after=RETRY_AFTER_SECONDS)

    def start(self) -> None:
        if self.max_lag and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._measure(), name="event-loop-lag")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _measure(self) -> None:
        """How late a sleep of LAG_INTERVAL wakes up: the time a callback waits for the loop."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            last = max(0.0, loop.time() - started - LAG_INTERVAL)
            lag = min(last, self.last)
            self.last = last
            if (lag > self.max_lag) != (self.lag > self.max_lag):
                log.warning(
                    "event loop lag %.0f ms: %s new requests",
                    lag * 1000,
                    "shedding" if lag > self.max_lag else "admitting",
                )
            self.lag = lag
