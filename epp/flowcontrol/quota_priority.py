"""How the EPP's rate-limit quota (epp.flowcontrol.envoy_quota's rate) is split between the
gateways' quota buckets by priority, as GIE's flow control serves its bands: the highest priority
first, sheddable traffic (priority < 0) only with what is left.

Each bucket (one gateway's, one objective's: epp.extproc.rlqs) has a priority, its objective's
(GIE's priority 0 for the default bucket, which holds requests naming no objective or one the
gateway does not list, and for an objective the EPP does not know) and a demand in requests per
second. The priorities are served from the highest down: each band's buckets share everything the
bands above it left, not just their demand, so a band's own burst between two measurements of its
demand is still admitted (an Envoy gateway reports its buckets' counts only every 5 s), and the
bands below get what is left once the band's measured demand is taken out. What the limit then
admits in all is about the limit while the demands hold, more only by a higher band's burst, which
the next measurement (the EPP's own count, within a window) takes from the bands below. Inside a
band the buckets (the same objective on several gateways, or several objectives of one priority)
share by their demand, but for EQUAL_SHARE of it split equally, so a bucket idle at its last
report is not starved. No bucket gets less than `floor` (Envoy's token bucket cannot hold less than
a token a second): a sheddable band left nothing still gets that much per bucket."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Generic, TypeVar

EQUAL_SHARE = 0.1  # of a band's allotment, split equally between its buckets; the rest by demand
DEFAULT_PRIORITY = 0  # GIE's priority of a request with no objective, or one it does not know

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Demand(Generic[K]):
    """One bucket: its key, priority and requests per second."""

    key: K
    priority: int
    rate: float


def allot(rate: float, demands: Sequence[Demand[K]], floor: float = 0.0) -> dict[K, float]:
    """Each bucket's requests per second out of `rate`: the bands from the highest priority down,
    each band sharing what the bands above left (by demand, EQUAL_SHARE equally), the band's demand
    then taken from it for the bands below; never under `floor`."""
    allotted: dict[K, float] = {}
    left = rate
    ordered = sorted(demands, key=lambda d: -d.priority)
    for _, band_iter in groupby(ordered, key=lambda d: d.priority):
        band = list(band_iter)
        total = sum(d.rate for d in band)
        for d in band:
            share = (
                EQUAL_SHARE / len(band) + (1 - EQUAL_SHARE) * d.rate / total if total > 0 else 1 / len(band)
            )
            allotted[d.key] = max(floor, left * share)
        left = max(0.0, left - total)
    return allotted


class ObjectiveCounts:
    """The requests the EPP itself saw per objective (their first ext_proc message: admitted or
    refused there, whatever the gateway's buckets reported so far), for the demands `allot` splits
    by. Names the EPP knows are counted apart (`known`: the objectives' priorities, so their number
    bounds the counts), every other under None, as the gateway's default bucket holds them. `rates`
    is the requests per second of each over the last `window` (`sample` once per decision)."""

    def __init__(
        self,
        known: Callable[[], Mapping[str, int]],
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._known = known
        self._window = window
        self._clock = clock
        self._counts: dict[str | None, int] = {}
        self._samples: deque[tuple[float, dict[str | None, int]]] = deque([(clock(), {})])

    def seen(self, objective: str | None) -> None:
        key = objective if objective and objective in self._known() else None
        self._counts[key] = self._counts.get(key, 0) + 1

    def sample(self) -> None:
        now = self._clock()
        samples = self._samples
        samples.append((now, dict(self._counts)))
        while len(samples) > 2 and samples[1][0] <= now - self._window:
            samples.popleft()

    def rates(self) -> dict[str | None, float]:
        (then, before), (now, after) = self._samples[0], self._samples[-1]
        if now <= then:
            return {}
        return {key: (count - before.get(key, 0)) / (now - then) for key, count in after.items()}
