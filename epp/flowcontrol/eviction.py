"""In-flight eviction (llm-d router's `flowControl.enableEviction`): requests already sent to a model
server that flow control may take back to make room for higher-priority work waiting in its
queues. This module is the bookkeeping: every routed request is tracked while it runs; those the
filter policy accepts (`sheddable-eviction-filter`: priority below zero) are evictable, in the
order of the ordering policy (`priority-then-time-eviction-order-policy`: lowest priority first,
then the most recently dispatched, which has the least KV cache invested). The reclamation
controller (epp/flowcontrol/reclamation.py) decides when and how many.

Evicting a request resolves its `signal`; the ext_proc stream carrying it watches the signal and
answers the client at once (429, `request evicted by flow control`, header
`x-llm-d-request-dropped-reason: evicted`), which makes the gateway drop the upstream request.
When that stream ends, the evictor reports the eviction confirmed."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from epp.framework import Extension
from epp.requests import InferenceRequest

EVICTED_MESSAGE = "request evicted by flow control"
DROPPED_REASON_HEADER = "x-llm-d-request-dropped-reason"
DROPPED_REASON_EVICTED = "evicted"

_sequence = itertools.count()


@dataclass(eq=False, slots=True)
class EvictionItem:
    """One in-flight request, from routing until its stream ends."""

    request: InferenceRequest
    priority: int
    dispatched: float  # monotonic
    target: str  # host:port of the endpoint serving it
    signal: asyncio.Future[None]  # resolved to evict it
    seq: int = field(default_factory=lambda: next(_sequence))
    evictable: bool = False  # accepted by the filter policy
    queued: bool = False  # in the evictable heap (until evicted or untracked)

    @property
    def request_id(self) -> str:
        return self.request.request_id


class EvictionFilterPolicy(Extension):
    """Which in-flight requests may be evicted at all."""

    @abstractmethod
    def accept(self, item: EvictionItem) -> bool: ...


class EvictionOrderingPolicy(Extension):
    """Which evictable request goes first: the smallest key."""

    @abstractmethod
    def key(self, item: EvictionItem) -> tuple[float, ...]: ...


class RequestEvictor:
    """The in-flight requests, a heap of the evictable ones, and the evictions not yet confirmed.
    `on_terminated` is told the id of each evicted request once its stream has ended."""

    def __init__(
        self,
        ordering: EvictionOrderingPolicy,
        accepts: EvictionFilterPolicy,
        clock: Callable[[], float],
    ) -> None:
        self.ordering = ordering
        self.filter = accepts
        self._clock = clock
        self._heap: list[tuple[tuple[float, ...], int, EvictionItem]] = []
        self.in_flight: dict[str, EvictionItem] = {}
        self.evictable = 0
        self._pending: set[str] = set()
        self.on_terminated: Callable[[str], None] | None = None

    def track(self, request: InferenceRequest, target: str) -> EvictionItem | None:
        """Start tracking a routed request; None when it has no id to be known by, or when a
        request with the same id (a client reusing `x-request-id`) is in flight already: ids are
        how evictions are confirmed, so only the first of them is evictable."""
        if (
            not request.request_id
            or request.request_id in self.in_flight
            or request.request_id in self._pending
        ):
            return None
        item = EvictionItem(
            request, request.priority, self._clock(), target, asyncio.get_running_loop().create_future()
        )
        # The policies (plugins) first: one that raises leaves nothing tracked.
        item.evictable = self.filter.accept(item)
        if item.evictable:
            self._push(item)
        self.in_flight[item.request_id] = item
        return item

    def release(self, item: EvictionItem) -> None:
        """`item`'s stream ended: untracked if it is still the entry for its id (tracked, or
        evicted and awaiting that end)."""
        if self.in_flight.get(item.request_id) is item or item.request_id in self._pending:
            self.untrack(item.request_id)

    def untrack(self, request_id: str) -> None:
        """The request's stream ended (completed, failed, client gone, or evicted)."""
        item = self.in_flight.pop(request_id, None)
        if item is not None and item.queued:
            item.queued = False
            self.evictable -= 1
            self._compact()
        if request_id in self._pending:
            self._pending.discard(request_id)
            if self.on_terminated is not None:
                self.on_terminated(request_id)

    def victim_priority(self) -> int | None:
        """The priority of the request that would be evicted next; None when none is evictable."""
        head = self._head()
        return None if head is None else head.priority

    def evict(self, count: int, priority_bound: int) -> list[str]:
        """Evict up to `count` requests in the ordering policy's order, stopping at the first whose
        priority is not strictly below `priority_bound`; the ids evicted."""
        evicted: list[str] = []
        while len(evicted) < count:
            item = self._head()
            if item is None or item.priority >= priority_bound:
                break
            heapq.heappop(self._heap)
            item.queued = False
            self.evictable -= 1
            del self.in_flight[item.request_id]  # as upstream: no longer counted as in flight
            self._pending.add(item.request_id)
            if not item.signal.done():
                item.signal.set_result(None)
            evicted.append(item.request_id)
        return evicted

    def _push(self, item: EvictionItem) -> None:
        heapq.heappush(self._heap, (self.ordering.key(item), item.seq, item))
        item.queued = True
        self.evictable += 1

    def _head(self) -> EvictionItem | None:
        heap = self._heap
        while heap and not heap[0][2].queued:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def _compact(self) -> None:
        """Entries of requests that left are skipped lazily; rebuilt once they outnumber the rest."""
        if len(self._heap) > 2 * self.evictable + 16:
            self._heap = [entry for entry in self._heap if entry[2].queued]
            heapq.heapify(self._heap)
