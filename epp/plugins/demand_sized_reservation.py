"""`demand-sized-reservation`: pods kept for one protected class of requests, as many as its recent
demand needs, and filtered off for everything else.

Why: a flood that shares the protected class's servers shares their batches, and no queue order
or usage limit in the EPP takes that back (docs/benchmarks.md, "Tenants and priorities under
overload"). A static reservation (`label-selector-filter` on labelled pods) fixes that but leaves
the reserved pods idle whenever the protected class is; this one follows the class's demand.

The protected class is the requests with `priority` at least `minPriority`, or whose fairness id
is in `fairnessIds`, or whose header `headerName` has a value in `headerValues` (exactly one of the
three). Its demand is the peak number of its requests in flight over the last `window`; it keeps
ceil(peak x (1 + `headroom`) / `requestsPerPod`) pods, at least `minPods` while it is active, at
most `maxPodsFraction` of the pool (the rest stays open to the others; the cap wins over
`minPods`). The set grows at once, taking the pods with the fewest other requests in flight; it
shrinks one pod at a time, at most once per `window`, when the peak fits one pod fewer with 1.5
times the headroom (so the request that tips a boundary does not take a pod away and back),
dropping the pod with the fewest protected requests. After `idleRelease` with none
of its requests in flight it holds no pod: the whole pool serves the others again; when the
class comes back it gets as many pods at once as it held then (its demand a window later decides
whether it keeps them), since growing one request at a time would pile its first requests, with
their prompts' prefixes evicted meanwhile, onto one pod.

In a profile it is a filter and a scorer: the filter removes reserved pods for requests outside
the class; the scorer gives the class's requests 0 on pods not reserved and, on reserved ones, 1.0
less a quarter of its requests in flight (of every class) per `requestsPerPod`, 0.5 from twice
that. With a weight above the other scorers' sum they go to reserved pods whenever any is a
candidate, and to any other pod otherwise; among reserved pods a busy one loses to an idle one:
a pod added to the set later would otherwise get none of the class's prompts (the prefix-cache
scorer keeps them on the pods that served them first) and one just taken from the others, still
serving their requests, would get them at once. The state is this EPP replica's
own: each sizes from the requests it routes, and sees the pods its filter is given; the cap applies
to each request's candidates (in a pool serving several models, to that model's pods). A reserved
pod that turns unhealthy is not counted as held, so the class gets a replacement at once; when
it recovers, the set shrinks as usual, and at once if it now breaks the cap."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence

from pydantic import Field, model_validator

from epp.datalayer import EndpointObserver
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.params.values import Duration
from epp.requestcontrol import PreRequest, ResponseComplete
from epp.requests import InferenceRequest, Usage
from epp.scheduling.framework import Filter, Scorer
from epp.scheduling.types import SchedulingResult

log = logging.getLogger(__name__)

# The set shrinks only if the peak fits one pod fewer with this much more headroom, so a demand at
# a boundary (the one request that tips it over) does not take a pod away and back again.
SHRINK_HEADROOM = 1.5


class DemandSizedReservationParams(PluginParams):
    min_priority: int | None = None
    fairness_ids: list[str] = []
    header_name: str = ""
    header_values: list[str] = []
    requests_per_pod: float = Field(default=8.0, gt=0.0, allow_inf_nan=False)
    headroom: float = Field(default=0.2, ge=0.0, allow_inf_nan=False)
    window: Duration = Field(default=10.0, gt=0.0)
    idle_release: Duration = Field(default=30.0, ge=0.0)
    max_pods_fraction: float = Field(default=0.75, gt=0.0, le=1.0, allow_inf_nan=False)
    min_pods: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_class(self) -> DemandSizedReservationParams:
        chosen = [
            name
            for name, given in (
                ("minPriority", self.min_priority is not None),
                ("fairnessIds", bool(self.fairness_ids)),
                ("headerName", bool(self.header_name.strip())),
            )
            if given
        ]
        if len(chosen) != 1:
            raise ValueError(
                "name the protected class with exactly one of minPriority, fairnessIds or headerName "
                f"(given: {', '.join(chosen) or 'none'})"
            )
        if chosen == ["headerName"] and not self.header_values:
            raise ValueError("headerValues: needs at least one value when headerName is set")
        if self.header_values and chosen != ["headerName"]:
            raise ValueError("headerValues: only with headerName")
        return self


class DemandPeak:
    """The peak of a count over a sliding window (the value in force at the window's start counts).
    Each value replaced is kept with the time it stopped being in force, but only while no later
    one is at least as high (that one stays in the window longer): the values kept fall from the
    oldest to the newest, so the peak is the oldest still in the window, read in O(1) amortised
    however many requests the window holds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.current = 0
        # (when it stopped being in force, value): values strictly falling, times rising
        self.changes: deque[tuple[float, int]] = deque()

    def record(self, now: float, value: int) -> None:
        changes, replaced = self.changes, self.current
        while changes and changes[-1][1] <= replaced:
            changes.pop()
        changes.append((now, replaced))
        self.current = value
        self._forget(now)

    def peak(self, now: float) -> int:
        self._forget(now)
        changes = self.changes
        return max(changes[0][1], self.current) if changes else self.current

    def _forget(self, now: float) -> None:
        start, changes = now - self.window, self.changes
        while changes and changes[0][0] <= start:
            changes.popleft()


@register
class DemandSizedReservation(Plugin, Filter, Scorer, PreRequest, ResponseComplete, EndpointObserver):
    type_name = "demand-sized-reservation"
    Params = DemandSizedReservationParams

    def __init__(self, name: str, params: DemandSizedReservationParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.clock = context.clock
        self.fairness_ids = frozenset(params.fairness_ids)
        self.header = params.header_name.strip().lower()
        self.header_values = frozenset(params.header_values)
        self.reserved: dict[str, Endpoint] = {}
        self.protected_on: dict[str, int] = {}  # protected requests in flight per endpoint name
        self.in_flight = 0
        self.demand = DemandPeak(params.window)
        self.last_active = -math.inf
        self.last_resize = -math.inf
        self.released = 0  # pods held when the class went idle: what it gets back when it returns
        self._charge_key = f"{name}/routed"

    def protects(self, request: InferenceRequest) -> bool:
        p = self.params
        if p.min_priority is not None:
            return request.priority >= p.min_priority
        if self.fairness_ids:
            return request.fairness_id in self.fairness_ids
        return request.headers.get(self.header, "").strip() in self.header_values

    def ceiling(self, pool_size: int) -> int:
        """At most this many pods reserved: none when the cap is under one pod (one pod at 0.75),
        since the rest of the pool stays open to the others."""
        return math.floor(pool_size * self.params.max_pods_fraction)

    def idle(self, now: float, arriving: int) -> bool:
        return self.in_flight == 0 and arriving == 0 and now - self.last_active >= self.params.idle_release

    def wanted(self, now: float, pool_size: int, arriving: int, extra: float = 1.0) -> int:
        """Pods the class should hold now, `arriving` of its requests about to be routed."""
        if self.idle(now, arriving):
            return 0
        peak = max(self.demand.peak(now), self.in_flight + arriving)
        ceiling = self.ceiling(pool_size)
        # Compared with the cap before rounding: extreme parameters make it infinite.
        needed = peak * (1.0 + extra * self.params.headroom) / self.params.requests_per_pod if peak else 0.0
        if needed >= ceiling:
            return ceiling
        return min(max(self.params.min_pods, math.ceil(needed)), ceiling)

    def resize(self, candidates: Sequence[Endpoint], arriving: int) -> None:
        """Grow to what the demand needs at once; shrink one pod per window, when the peak over a
        whole window fits the smaller set with 1.5 times the headroom; release every pod when
        idle; come back from idle with what was released."""
        now = self.clock()
        if arriving:
            self.last_active = now
        pool_size, held = len(candidates), self.held()
        wanted = self.wanted(now, pool_size, arriving)
        if wanted and not held:
            wanted = min(max(wanted, self.released), self.ceiling(pool_size))
        if wanted > held:
            free = [e for e in candidates if e.name not in self.reserved]
            free.sort(key=lambda e: (e.inflight_requests - self.protected_on.get(e.name, 0), e.name))
            self.reserved.update((e.name, e) for e in free[: wanted - held])
        elif held and self.idle(now, arriving):
            self.released = held
            self.reserved.clear()
        elif (
            now - self.last_resize >= self.params.window
            and self.wanted(now, pool_size, arriving, SHRINK_HEADROOM) < held
        ):
            self._release_quietest([n for n, e in self.reserved.items() if e.healthy], 1)
        elif held > (ceiling := self.ceiling(pool_size)):
            names = {e.name for e in candidates}
            here = [n for n, e in self.reserved.items() if e.healthy and n in names]
            if len(here) <= ceiling:
                return
            self._release_quietest(here, len(here) - ceiling)
        else:
            return
        self.last_resize = now
        log.debug(
            "%s: %d pods reserved (wanted %d): %s", self.name, len(self.reserved), wanted, list(self.reserved)
        )

    def held(self) -> int:
        """Reserved pods able to serve the class: one gone unhealthy is replaced, not counted."""
        return sum(1 for e in self.reserved.values() if e.healthy)

    def _release_quietest(self, names: list[str], count: int) -> None:
        names.sort(key=lambda n: (self.protected_on.get(n, 0), n))
        for name in names[:count]:
            del self.reserved[name]

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        protected = self.protects(request)
        self.resize(candidates, 1 if protected else 0)
        if protected or not self.reserved:
            return candidates
        return [e for e in candidates if e.name not in self.reserved]

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        if not self.protects(request):
            return [0.0] * len(candidates)
        full = 2 * self.params.requests_per_pod
        return [
            1.0 - 0.5 * min(1.0, e.inflight_requests / full) if e.name in self.reserved else 0.0
            for e in candidates
        ]

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        if not self.protects(request):
            return
        names = [e.name for e in result.first_targets()]
        for name in names:
            self.protected_on[name] = self.protected_on.get(name, 0) + 1
        request.attributes[self._charge_key] = names
        self._count(1)

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        names = request.attributes.pop(self._charge_key, None)
        if names is None:
            return
        for name in names:
            left = self.protected_on.get(name, 0) - 1
            if left > 0:
                self.protected_on[name] = left
            else:
                self.protected_on.pop(name, None)
        self._count(-1)

    def _count(self, change: int) -> None:
        now = self.clock()
        self.in_flight += change
        self.last_active = now
        self.demand.record(now, self.in_flight)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.reserved.pop(endpoint.name, None)
        self.protected_on.pop(endpoint.name, None)
