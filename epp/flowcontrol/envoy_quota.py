"""The request rate the EPP asks the gateway to admit before calling it: its rate-limit quota,
which Envoy's `rate_limit_quota` filter enforces as a token bucket (the RLQS server is
epp.extproc.rlqs). A refusal by the EPP waits in the same queues (Envoy's worker, gRPC core, the
EPP's event loop) as the requests it sheds; one by Envoy's bucket is answered at once.

No limit while the EPP keeps up. Once its overload guard refuses (its standing-queue controller
sheds), the limit is the rate the EPP admitted over the last `window`, measured as the queue stood,
not configured: what it actually served under that load. While the guard still refuses, the
limit may drop again to the measured rate once per `hold` (a queue that formed before the limit
drains through it first). While nothing is refused, it rises additively (`increase` times the
rate first set, per second) to find capacity freed by the refusals that moved to Envoy, and it is
lifted altogether once, for `lift_after`, the EPP refused nothing and admitted less than
`lift_below` of the limit: the demand fell below it, so it no longer binds (a binding bucket lets
through about its rate; the gateway's own reports of its denials come every 5 s in Envoy 1.40, too
late for this). The guard sees every
request the same way (it refuses before reading one), so the limit binds requests of every
priority alike, as the EPP's own overload refusals do."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

MIN_RATE = 1.0  # requests per second: a limit never shuts the gateway entirely


@dataclass(frozen=True)
class QuotaTuning:
    window: float = 0.5  # seconds of admissions the measured rate covers
    hold: float = 1.0  # seconds between two cuts while the guard keeps refusing
    increase: float = 0.1  # per second, a share of the rate first set
    lift_below: float = 0.8  # admitted under this share of the limit, the demand is below it ...
    lift_after: float = 1.0  # ... for this long, without a refusal: the limit goes


class EnvoyQuota:
    """Call `tick` periodically; `rate` is the limit in requests per second (None: none).
    `admitted` and `refused` are the overload guard's running counts of the requests it let
    through and those it refused."""

    def __init__(
        self,
        admitted: Callable[[], int],
        refused: Callable[[], int],
        tuning: QuotaTuning = QuotaTuning(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admitted = admitted
        self._refused = refused
        self.tuning = tuning
        self._clock = clock
        self.rate: float | None = None
        now = clock()
        self._samples: deque[tuple[float, int]] = deque([(now, admitted())])
        self._last_tick = now
        self._last_refused = refused()
        self._below_since: float | None = None  # admitted under lift_below of the limit since
        self._next_cut = float("-inf")
        self._base = 0.0  # the rate first set in this episode: the additive step's unit

    def measured(self) -> float:
        """Requests per second the EPP admitted over the last window."""
        (then, before), (now, count) = self._samples[0], self._samples[-1]
        return (count - before) / (now - then) if now > then else 0.0

    def tick(self) -> float | None:
        now = self._clock()
        self._sample(now)
        refused = self._refused()
        refusing = refused > self._last_refused
        self._last_refused = refused
        elapsed, self._last_tick = now - self._last_tick, now
        if refusing:
            self._below_since = None
            measured = max(MIN_RATE, self.measured())
            if self.rate is None:
                self._base = self.rate = measured
                self._next_cut = now + self.tuning.hold
            elif now >= self._next_cut and measured < self.rate:
                self.rate = measured
                self._next_cut = now + self.tuning.hold
        elif self.rate is not None:
            if self.measured() >= self.tuning.lift_below * self.rate:
                self._below_since = None
            elif self._below_since is None:
                self._below_since = now
            elif now - self._below_since >= self.tuning.lift_after:
                self.rate = self._below_since = None
                return None
            self.rate += self._base * self.tuning.increase * elapsed
        return self.rate

    def _sample(self, now: float) -> None:
        samples = self._samples
        samples.append((now, self._admitted()))
        while len(samples) > 2 and samples[1][0] <= now - self.tuning.window:
            samples.popleft()
