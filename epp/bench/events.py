"""The virtual-time run's event queue: events by time, ties in the order they were pushed.

In C (`_eventheap.c`) where built: a 1,000-endpoint run pops ~1.3 million events from a heap of
~1,000, and heapq's comparisons of cold tuples were ~5 % of it. `PythonEventHeap` (heapq over
(time, push number, handler, payload)) is the fallback and the reference; both give every event in
the same order."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any, Protocol

from epp.compiled import warn_python_fallback

try:
    from epp.bench._eventheap import EventHeap as _CompiledEventHeap
except ImportError:  # no C compiler at install: heapq, same order
    _CompiledEventHeap = None  # type: ignore[assignment,misc]

Handler = Callable[[float, Any], None]
EVENT_QUEUE = "the virtual-time run's event queue"


class EventQueue(Protocol):
    def push(self, at: float, handler: Handler, payload: Any, /) -> None: ...

    def pop(self) -> tuple[float, Handler, Any]: ...

    def next_time(self) -> float: ...

    def __len__(self) -> int: ...


class PythonEventHeap:
    """heapq over (time, push number, handler, payload)."""

    __slots__ = ("_events", "_pushed")

    def __init__(self) -> None:
        self._events: list[tuple[float, int, Handler, Any]] = []
        self._pushed = 0

    def push(self, at: float, handler: Handler, payload: Any, /) -> None:
        if at != at:
            raise ValueError("an event's time cannot be NaN")
        heapq.heappush(self._events, (at, self._pushed, handler, payload))
        self._pushed += 1

    def pop(self) -> tuple[float, Handler, Any]:
        if not self._events:
            raise IndexError("pop from an empty event heap")
        at, _, handler, payload = heapq.heappop(self._events)
        return at, handler, payload

    def next_time(self) -> float:
        return self._events[0][0] if self._events else math.inf

    def __len__(self) -> int:
        return len(self._events)


def new_event_queue() -> EventQueue:
    if _CompiledEventHeap is None:
        warn_python_fallback(EVENT_QUEUE, "about 1 us more per simulated event")
        return PythonEventHeap()
    return _CompiledEventHeap()
