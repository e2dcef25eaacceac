"""When in-flight eviction fires and how many requests it takes back (llm-d router's reclamation
controller), consulted by the dispatch loop each time a band is held back by its ceiling.

Trigger: the pacing gate is open, some request is evictable, and a held-back band (saturation at
or over its ceiling, the ceiling above zero, requests queued) has a priority strictly above the
next victim's. Sizing, in the saturation gauge's own units:

    target = saturation - that band's ceiling
    credit = saturation / requests in flight          (one request's mean footprint)
    n      = max(1, ceil((target - pending) / credit)), at most MAX_REVOCATIONS and the evictable

and no victim may have the waiting band's priority or more. Pacing is stop-and-wait: the next
decision waits until every eviction is confirmed (its stream ended, or CONFIRMATION_TIMEOUT
passed) and then `grace` more, the time the freed capacity takes to show in the saturation
detector's readings (`eviction_grace`). Metrics: llm-d's `llm_d_epp_flow_control_revocations_*`,
`_reclaim_target`, `_pending_reclaim`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from epp.datalayer.scraper import DEFAULT_INTERVAL
from epp.flowcontrol.eviction import RequestEvictor
from epp.metrics.exporter import FlowControlMetrics

MAX_REVOCATIONS = 2  # per decision: bounds the damage of a wrong footprint estimate
CONFIRMATION_TIMEOUT = 10.0  # seconds an unconfirmed eviction may hold the gate shut
ENGINE_RECLAIM_BUDGET = 0.25  # engine abort and KV cache release, before a scrape can see it
LEADING_SENSOR_GRACE = 0.010  # a detector counting the EPP's own requests sees it at once
SELF_COUNTING_DETECTORS = frozenset({"concurrency-detector"})
DEFAULT_STALENESS = 2.0  # GIE's --metrics-staleness-threshold


def eviction_grace(detector_type: str, refresh_interval: float, staleness: float) -> float:
    """How long after a confirmed eviction the detector shows the capacity freed: at once for one
    counting the EPP's own requests; after the engine's release and a fresh scrape otherwise."""
    if detector_type in SELF_COUNTING_DETECTORS:
        return LEADING_SENSOR_GRACE
    return refresh_interval + staleness + ENGINE_RECLAIM_BUDGET


@dataclass(slots=True)
class _Revocation:
    credit: float
    issued: float


class ReclamationController:
    def __init__(
        self,
        evictor: RequestEvictor,
        queued: Callable[[int], bool],
        detector_type: str,
        metrics: FlowControlMetrics,
        pool: str,
        clock: Callable[[], float],
    ) -> None:
        self.evictor = evictor
        self._queued = queued  # whether the band of a priority has requests waiting
        self.detector_type = detector_type
        self.grace = eviction_grace(detector_type, DEFAULT_INTERVAL, DEFAULT_STALENESS)
        self._metrics = metrics
        self._pool = pool
        self._clock = clock
        self.outstanding: dict[str, _Revocation] = {}
        self.cooling: list[tuple[float, float]] = []  # (credit, expires): confirmed, not yet visible
        self.pending = 0.0
        evictor.on_terminated = self.confirm

    def scrape_timing(self, refresh_interval: float, staleness: float) -> None:
        """The metrics scraper's interval and staleness limit, when not GIE's defaults."""
        self.grace = eviction_grace(self.detector_type, refresh_interval, staleness)

    def gate_open(self, now: float) -> bool:
        """Whether a decision may run: every eviction confirmed (or timed out) and its grace over."""
        for request_id, revocation in list(self.outstanding.items()):
            if now - revocation.issued >= CONFIRMATION_TIMEOUT:
                del self.outstanding[request_id]
                self.cooling.append((revocation.credit, now + self.grace))
                self._metrics.revoked(self._pool, "timed_out", None)
        expired = [debit for debit in self.cooling if debit[1] <= now]
        if expired:
            self.cooling = [debit for debit in self.cooling if debit[1] > now]
            self.pending = max(0.0, self.pending - sum(credit for credit, _ in expired))
            self._metrics.pending_reclaim(self._pool, self.pending)
        return not self.outstanding and not self.cooling

    def consider(self, saturation: float, priorities: list[int], ceilings: list[float], blocked: int) -> None:
        """The dispatch cycle stopped at band index `blocked`: evict if a held-back band's waiting
        requests outrank the next victim."""
        if not self.gate_open(self._clock()):
            return
        victim = self.evictor.victim_priority()
        if victim is None:
            return
        for index in range(blocked, len(priorities)):
            priority, ceiling = priorities[index], ceilings[index]
            if priority <= victim:
                return
            # A zero ceiling never opens, whatever is freed; an open band dispatches next cycle.
            if ceiling <= 0 or saturation < ceiling or not self._queued(priority):
                continue
            self.reclaim(saturation, ceiling, priority)
            return

    def reclaim(self, saturation: float, ceiling: float, demand_priority: int) -> list[str]:
        in_flight, evictable = len(self.evictor.in_flight), self.evictor.evictable
        if in_flight <= 0 or evictable <= 0:
            return []
        credit = saturation / in_flight
        if not credit > 0 or math.isinf(credit):
            return []
        target = saturation - ceiling
        net = target - self.pending
        self._metrics.reclaim_target(self._pool, target)
        if net < 0 or (net == 0 and self.pending > 0):
            return []
        # Unblocking takes strictly more than the deficit: at a zero deficit still evict one.
        count = min(max(1, math.ceil(net / credit)), MAX_REVOCATIONS, evictable)
        evicted = self.evictor.evict(count, demand_priority)
        now = self._clock()
        for request_id in evicted:
            self.outstanding[request_id] = _Revocation(credit, now)
            self.pending += credit
        self._metrics.revocations_issued(self._pool, demand_priority, len(evicted))
        self._metrics.pending_reclaim(self._pool, self.pending)
        return evicted

    def confirm(self, request_id: str) -> None:
        """An evicted request's stream ended."""
        revocation = self.outstanding.pop(request_id, None)
        if revocation is None:
            return
        now = self._clock()
        self.cooling.append((revocation.credit, now + self.grace))
        self._metrics.revoked(self._pool, "confirmed", now - revocation.issued)
