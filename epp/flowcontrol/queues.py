"""Flow control's extension points (GIE's framework/interface/flowcontrol: how requests are
ordered within a flow, how a band chooses between its flows, how high each band may fill the
pool; the built-in policies are plugins in epp/plugins/ under GIE's type names) and the flow
registry they work on: priority bands, the flows (one per fairness id) inside each, and the
queued requests inside each flow.

A flow exists only while it holds requests: it is created by its first request and dropped the
moment its last one leaves (dispatched, expired, cancelled), so memory is bounded by what is
queued, whatever the number of fairness ids clients invent. (GIE keeps an idle flow for 5
minutes before collecting it; nothing here is lost by collecting at once, because a flow has no
state besides its queue.)"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
from abc import abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.framework import Extension
from epp.requests import InferenceRequest


class Outcome(enum.Enum):
    """GIE's QueueOutcome names (they are the `outcome` label of the metrics)."""

    NOT_YET_FINALIZED = "NotYetFinalized"
    DISPATCHED = "Dispatched"
    REJECTED_CAPACITY = "RejectedCapacity"
    REJECTED_OTHER = "RejectedOther"
    EVICTED_TTL = "EvictedTTL"
    EVICTED_CONTEXT_CANCELLED = "EvictedContextCancelled"
    EVICTED_OTHER = "EvictedOther"


class OrderingPolicy(Extension):
    """Orders the requests of one flow: the smallest key is dispatched first. Keys of one band's
    flows are compared with each other by `global-strict-fairness-policy`."""

    @abstractmethod
    def key(self, item: QueuedRequest) -> tuple[float, ...]: ...


class FairnessPolicy(Extension):
    """Chooses which flow of a priority band gives up its head next."""

    def new_state(self) -> Any:
        """Per-band state (a round-robin cursor); one per band that uses the policy."""
        return None

    @abstractmethod
    def pick(self, band: Band) -> Flow | None:
        """A flow with queued requests, or None when the band is empty."""

    def dispatched(self, band: Band, item: QueuedRequest) -> None:
        """Told of each request the band dispatched (after `pick`)."""


class UsageLimitPolicy(Extension):
    """The saturation ceiling of each priority band: a band dispatches only while the pool's
    saturation is below its ceiling (GIE's UsageLimitPolicy)."""

    @abstractmethod
    def ceilings(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        """One ceiling per priority, in the order given (highest priority first). Called once
        per dispatch cycle, so a policy may keep state across cycles (a duty cycle)."""

    def lowest_ceiling(self, saturation: float, priorities: Sequence[int]) -> float:
        """The lowest ceiling, for a caller that only asks (not a dispatch cycle): a stateful
        policy overrides this so that asking changes nothing."""
        return min(self.ceilings(saturation, priorities))


_sequence = itertools.count()


@dataclass(eq=False, slots=True)
class QueuedRequest:
    request: InferenceRequest
    fairness_id: str
    priority: int
    byte_size: int
    enqueued: float  # monotonic
    ttl: float  # seconds; 0 = none
    future: asyncio.Future[Outcome]
    seq: int = field(default_factory=lambda: next(_sequence))
    flow: Flow | None = None
    outcome: Outcome = Outcome.NOT_YET_FINALIZED

    @property
    def deadline(self) -> float:
        """Monotonic time the request expires; +inf without a TTL."""
        return self.enqueued + self.ttl if self.ttl > 0 else float("inf")


class Flow:
    """One fairness id's queue within a band: a heap on the band's ordering key. Requests that
    leave out of order (expired, cancelled) are marked and skipped, and the heap is compacted when
    such leftovers outnumber the live entries."""

    __slots__ = ("_heap", "_stale", "band", "bytes", "fairness_id", "length")

    def __init__(self, band: Band, fairness_id: str) -> None:
        self.band = band
        self.fairness_id = fairness_id
        self._heap: list[tuple[tuple[float, ...], int, QueuedRequest]] = []
        self._stale = 0
        self.length = 0
        self.bytes = 0

    def push(self, item: QueuedRequest) -> None:
        item.flow = self
        heapq.heappush(self._heap, (self.band.ordering.key(item), item.seq, item))
        self.length += 1
        self.bytes += item.byte_size

    def head(self) -> QueuedRequest | None:
        heap = self._heap
        while heap and heap[0][2].flow is not self:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][2] if heap else None

    def head_key(self) -> tuple[tuple[float, ...], int] | None:
        return self._heap[0][:2] if self.head() is not None else None

    def pop(self) -> QueuedRequest:
        item = self.head()
        assert item is not None, "pop from an empty flow"
        heapq.heappop(self._heap)
        self._detach(item)
        return item

    def remove(self, item: QueuedRequest) -> None:
        """Take a request out wherever it is (lazily: its heap entry is skipped later)."""
        self._detach(item)
        self._stale += 1
        if self._stale > 16 and self._stale > self.length:
            self._heap = [entry for entry in self._heap if entry[2].flow is self]
            heapq.heapify(self._heap)
            self._stale = 0

    def _detach(self, item: QueuedRequest) -> None:
        item.flow = None
        self.length -= 1
        self.bytes -= item.byte_size
        self.band.length -= 1
        self.band.bytes -= item.byte_size
        if self.length == 0:
            self.band.drop(self)


@dataclass(frozen=True)
class BandLimits:
    max_bytes: int  # 0 = unlimited
    max_requests: int  # 0 = unlimited


class Band:
    """A priority level: its flows (only those with queued requests), its policies and limits."""

    def __init__(
        self,
        priority: int,
        limits: BandLimits,
        fairness: FairnessPolicy,
        ordering: OrderingPolicy,
    ) -> None:
        self.priority = priority
        self.limits = limits
        self.fairness = fairness
        self.ordering = ordering
        self.fairness_state: Any = fairness.new_state()
        self.flows: dict[str, Flow] = {}
        # Fairness ids in the order their flows became non-empty: round robin's rotation. The one
        # served last is moved to the back; a flow that starts waiting joins just before it, so it
        # gets its turn before the flow just served gets another.
        self.rotation: deque[str] = deque()
        self._rotating: set[str] = set()
        self._served_last: str | None = None
        self.length = 0
        self.bytes = 0

    def flow(self, fairness_id: str) -> Flow:
        found = self.flows.get(fairness_id)
        if found is None:
            found = self.flows[fairness_id] = Flow(self, fairness_id)
            if fairness_id not in self._rotating:
                self._rotating.add(fairness_id)
                rotation = self.rotation
                if rotation and rotation[-1] == self._served_last:
                    rotation.insert(len(rotation) - 1, fairness_id)
                else:
                    rotation.append(fairness_id)
        return found

    def next_in_rotation(self) -> Flow | None:
        """Round robin: the flow after the one served last, in the order flows arrived."""
        while self.rotation:
            fairness_id = self.rotation.popleft()
            found = self.flows.get(fairness_id)
            if found is None:
                self._rotating.discard(fairness_id)
                continue
            self.rotation.append(fairness_id)
            self._served_last = fairness_id
            return found
        return None

    def add(self, item: QueuedRequest) -> None:
        self.flow(item.fairness_id).push(item)
        self.length += 1
        self.bytes += item.byte_size

    def drop(self, flow: Flow) -> None:
        """An emptied flow leaves the band (its rotation entry is skipped when reached)."""
        if self.flows.get(flow.fairness_id) is flow:
            del self.flows[flow.fairness_id]
            if not self.flows:
                self.flows = {}  # a dict never shrinks: after a burst of ids, start small again
        if len(self.rotation) > 2 * len(self.flows) + 16:
            self.rotation = deque(fid for fid in self.rotation if fid in self.flows)
            self._rotating = set(self.rotation)
