"""Detects a standing queue in front of the EPP from how long requests waited before it saw them,
after CoDel (Nichols & Jacobson, RFC 8289): a queue that absorbs a burst drains again within an
interval, one whose shortest wait stays above a small target for a whole interval only adds
latency. A fixed bound on the wait lets a queue as long as the bound stand for good; this keeps it
near the target instead: once every wait seen for `interval` exceeded `target`, each request that
waited more than `target` is refused, and the first one that waited less ends the shedding.

Unlike CoDel's drop rate, which starts at one per interval and grows with the square root of the
drop count (tuned for TCP senders that halve their rate at each drop), every late request is
refused at once: open-loop clients do not slow down, and a rate rising that slowly would take
seconds to match an excess of hundreds per second while the queue kept growing. The refusals
drain the queue (a refusal costs the EPP far less than serving), so shedding stops on its own as
soon as the waits are short again; what is refused is about the excess.

The waits compare the gateway's wall clock with the EPP's. A constant skew between the two is
taken out: each wait is measured from the shortest wait seen over the last few minutes (a
request that found no queue), which a skew shifts as much as every other wait. That floor is
never above `interval`, so a floor learnt under overload from the first requests (all late)
cannot hide a queue for long; a skew larger than that still needs the clocks fixed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from epp.requests import ErrorCode, RequestError

FLOOR_EPOCH = 60.0  # seconds: the floor is the shortest wait over the last FLOOR_EPOCHS of these
FLOOR_EPOCHS = 10
RETRY_AFTER_SECONDS = 1  # of every overload answer (epp.flowcontrol.overload's too)


class StandingQueue:
    """Feed it each request's wait (seconds, gateway clock to EPP clock); `shed` says whether to
    refuse that request. `clock` is monotonic seconds (injected by tests)."""

    def __init__(self, target: float, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < target < interval:
            raise ValueError(f"the target ({target}s) must be positive and below the interval ({interval}s)")
        self.target = target
        self.interval = interval
        self._clock = clock
        self.shedding = False
        # The one answer of every request shed (the same object each time, so the ext_proc server
        # builds its reply once: under overload refusals are the bulk of the EPP's work).
        self.refusal = RequestError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"the endpoint picker is overloaded: requests have waited over {target * 1000:g} ms to reach "
            f"it for {interval * 1000:g} ms (--queue-wait-target, --queue-wait-interval); retry later",
            retry_after=RETRY_AFTER_SECONDS,
        )
        self._next_sample = 0.0  # while shedding, when the next request's wait is read
        self._above_until: float | None = None  # when waits above target since then make a standing queue
        self._epoch_end = clock() + FLOOR_EPOCH
        self._epoch_floor = float("inf")
        self._floors: deque[float] = deque(maxlen=FLOOR_EPOCHS - 1)  # the earlier epochs' floors

    def floor(self) -> float:
        """The wait of a request that found no queue (clock skew and transit), at most `interval`."""
        return min(self._epoch_floor, *self._floors, self.interval)

    def shed(self, wait: float) -> bool:
        now = self._clock()
        self._learn_floor(now, wait)
        if wait - self.floor() <= self.target:
            self._above_until = None
            self.shedding = False
            return False
        if self._above_until is None:
            self._above_until = now + self.interval
        elif now >= self._above_until:
            self.shedding = True
        return self.shedding

    def sample_due(self) -> bool:
        """While shedding: whether to read the next request's wait (one per target) rather than
        refuse it unread."""
        now = self._clock()
        if now < self._next_sample:
            return False
        self._next_sample = now + self.target
        return True

    def _learn_floor(self, now: float, wait: float) -> None:
        if now >= self._epoch_end:
            if self._epoch_floor != float("inf"):
                self._floors.append(self._epoch_floor)
            self._epoch_floor = float("inf")
            self._epoch_end = now + FLOOR_EPOCH
        self._epoch_floor = min(self._epoch_floor, wait)
