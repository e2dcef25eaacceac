"""The request rate the EPP asks the gateway to admit before calling it: its rate-limit quota,
which Envoy's `rate_limit_quota` filter enforces as a token bucket (the RLQS server is
epp.extproc.rlqs). A refusal by the EPP waits in the same queues (Envoy's worker, gRPC core, the
EPP's event loop) as the requests it sheds; one by Envoy's bucket is answered at once.

No limit while the EPP keeps up. Once its overload guard refuses a significant share of what
reaches it (`overloaded`, over the last `window`: a few refusals in a burst are the host's
scheduling noise), the limit is the EPP's capacity measured as the queue stood, not configured:
the requests it handled per CPU-second it used (admitted ones, and refusals weighted by their
cost, `refusal_cost`, since that CPU serves once the refusals move to Envoy). Saturated, that is
the rate it admitted; when its waits grew while it was not busy (other processes held the CPU,
measured on a shared 2-core host: the guard refused at 40 % of a core), the rate it admitted would
be a limit far below what it serves, refusing more than the EPP did. While the guard keeps
refusing that much, the limit is measured again, at most once per `hold` (a queue that formed
before the limit drains through it first), never upwards. Otherwise it rises by `increase` once a
`rise_every` without a refusal, to find capacity the host frees (in steps: Envoy 1.40 replaces a
token bucket whose figures change by a full one, so a rise every tick would hand out a burst every
tick, about doubling the limit), and only while the EPP admits at least `lift_below` of it (so the
limit never grows past what the EPP receives). It is lifted once, for `lift_after`, the EPP
admitted less than `lift_below` of the part of the limit that still binds (`tick`'s `binding`: the
gateways that still deny requests hold it) without refusing: their demand fell below their share,
so the limit no longer binds (a binding bucket lets through about its rate; Envoy 1.40's own
reports of its denials come every 5 s, too late to lift on, soon enough to tell which gateways the
limit holds back). The guard's admissions and refusals are counted alike whatever a request's
priority, so this limit is one for all; it is split between the gateways' buckets by their
objectives' priorities (epp.flowcontrol.quota_priority), sheddable ones last."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIN_RATE = 1.0  # requests per second: a limit never shuts the gateway entirely
MAX_RATE = 2**32 - 1  # requests per second: Envoy's token bucket counts in uint32
MIN_BUSY = 0.1  # share of a core: below, the EPP's cost per request is not measured


@dataclass(frozen=True)
class QuotaTuning:
    window: float = 1.0  # seconds of admissions and refusals the measured rates cover
    overloaded: float = 0.2  # the share of requests refused that sets or cuts the limit
    refusal_cost: float = 0.3  # a refusal's CPU against a served request's (docs/benchmarks.md)
    hold: float = 1.0  # seconds between two cuts while the guard keeps refusing
    increase: float = 0.3  # a share of the limit, added ...
    rise_every: float = 1.0  # ... once this many seconds without a refusal
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
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._admitted = admitted
        self._refused = refused
        self._cpu = cpu
        self.tuning = tuning
        self._clock = clock
        self.rate: float | None = None
        now = clock()
        self._samples: deque[tuple[float, int, int, float]] = deque([(now, admitted(), refused(), cpu())])
        self._next_rise = float("inf")  # no rise before a limit
        self._below_since: float | None = None  # admitted under lift_below of the limit since
        self._next_cut = float("-inf")

    def measured(self) -> tuple[float, float]:
        """Requests per second the EPP admitted and refused over the last window."""
        (then, admitted, refused, _), last = self._samples[0], self._samples[-1]
        now, admitted_now, refused_now, _ = last
        if now <= then:
            return 0.0, 0.0
        return (admitted_now - admitted) / (now - then), (refused_now - refused) / (now - then)

    def busy(self) -> float:
        """The CPU the EPP's process used over the last window, in seconds per second: process
        time, so its event loop and its other threads too (asyncio.to_thread work, gRPC's
        threads). Capped at 1: past a core, the capacity is what it handled."""
        (then, _, _, cpu), (now, _, _, cpu_now) = self._samples[0], self._samples[-1]
        return min(1.0, (cpu_now - cpu) / (now - then)) if now > then else 0.0

    def capacity(self) -> float:
        """What the EPP would serve on a core of its own, the refusals it makes moved to the
        gateway: the requests it handled over the window, per CPU-second it used. Saturated, that
        is what it admitted; refusing while the host's other processes held the CPU (its waits
        grew though it was not busy), more, so a limit set then does not bind for long."""
        admitted, refused = self.measured()
        handled = (admitted + self.tuning.refusal_cost * refused) / max(self.busy(), MIN_BUSY)
        return min(MAX_RATE, max(MIN_RATE, handled))

    def tick(self, binding: float = 1.0) -> float | None:
        """The limit now. `binding`: the share of the limit held by the gateways it may still hold
        back (1: all; 0: none, so it goes after `lift_after`)."""
        now = self._clock()
        refusing = self._sample(now)
        admitted, refused = self.measured()
        if refusing:
            self._below_since = None
            self._next_rise = now + self.tuning.rise_every
        if refused > self.tuning.overloaded * (admitted + refused):
            if self.rate is None:
                self.rate = self.capacity()
                self._next_cut = now + self.tuning.hold
                log.warning(
                    "overloaded (admitting %.0f and refusing %.0f requests/s, %.0f%% of a core busy): "
                    "the gateway now admits %.0f requests/s (rate-limit quota)",
                    admitted,
                    refused,
                    self.busy() * 100,
                    self.rate,
                )
            elif now >= self._next_cut:
                self.rate = min(self.rate, self.capacity())
                self._next_cut = now + self.tuning.hold
        elif self.rate is not None and not refusing:
            if binding > 0 and admitted >= self.tuning.lift_below * binding * self.rate:
                self._below_since = None
            elif self._below_since is None:
                self._below_since = now
            elif now - self._below_since >= self.tuning.lift_after:
                self.rate = self._below_since = None
                log.warning("no longer overloaded: the gateway's rate-limit quota is lifted")
                return None
            if now >= self._next_rise and admitted >= self.tuning.lift_below * self.rate:
                self.rate = min(MAX_RATE, self.rate * (1 + self.tuning.increase))
                self._next_rise = now + self.tuning.rise_every
        return self.rate

    def _sample(self, now: float) -> bool:
        """Takes the guard's counts; whether it refused any since the last tick."""
        samples = self._samples
        refused = self._refused()
        refusing = refused > samples[-1][2]
        cpu, gap = self._cpu(), now - samples[-1][0]
        if gap > self.tuning.window and cpu - samples[-1][3] < MIN_BUSY * gap:
            # no tick for a whole window and next to no CPU: the process was stopped (SIGSTOP, a
            # cgroup's throttling), and a window spanning that time measures the stall, not its
            # capacity (a loop too busy to tick used the CPU, and is measured)
            samples.clear()
        samples.append((now, self._admitted(), refused, cpu))
        while len(samples) > 2 and samples[1][0] <= now - self.tuning.window:
            samples.popleft()
        return refusing
