"""The virtual-time run's event queue: events by time, ties in the order they were pushed.

In C (`_eventheap.c`) where built: a 1,000-endpoint run pops ~1.3 million events from a heap of
~1,000, and heapq's comparisons of cold tuples were ~5 % of it. `PythonEventHeap` (heapq over
(time, push number, handler, payload)) is the fallback and the reference; both give every event in
the same order.

The queue also takes the plain steps of engines' decode cohorts itself (`push_run`, `pop_before`,
`DecodeRun`): such a step is an event with its own push number, whose gaps go into the queue's gap
buffer in event order (`add_gaps` for the steps the harness delivers), but no handler runs for it.
In a 1,000-endpoint run most engine steps are these, and a handler call per step, with what the
harness and the engine do around it, was most of the cost of a step."""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from epp.compiled import warn_python_fallback

try:
    from epp.bench._eventheap import DecodeRun as _CompiledDecodeRun
    from epp.bench._eventheap import EventHeap as _CompiledEventHeap
except ImportError:  # no C compiler at install: heapq, same order
    _CompiledEventHeap = None  # type: ignore[assignment,misc]
    _CompiledDecodeRun = None  # type: ignore[assignment,misc]

Handler = Callable[[float, Any], None]
EVENT_QUEUE = "the virtual-time run's event queue"


class DecodeRun(Protocol):
    """What the harness reads of a run when it ends (`PythonDecodeRun` has the whole story)."""

    taken: int
    blocks_taken: int
    context: int
    last_end: float
    busy: float
    itl_total: float

    @property
    def adds(self) -> list[int]: ...

    def halt(self) -> None: ...


class PythonDecodeRun:
    """A decode cohort's plain steps, taken by the queue: ``n`` requests decode a token a step,
    the batch's decode context grows by ``n`` a step and a step lasts ``base + kv * context``
    (the engine's own arithmetic, `Engine.decode_ahead`), and step ``k`` takes ``blocks[k]``
    KV blocks. Its event delivers the step taken last (its gap ``n`` times) and, while ``left``
    and not halted, takes the next step and pushes that step's event; otherwise it is handed back
    to the handler. What the engine reads back when the run ends: ``taken`` steps and their
    ``blocks_taken``, the ``context``, ``last_end``, the running sums ``busy`` and ``itl_total``
    (added to in the engine's order) and the ITL histogram's bucket ``adds``."""

    __slots__ = ("_blocks", "_bounds", "adds", "base", "blocks_taken", "busy", "context", "gap",
                 "halted", "itl_total", "kv", "last_end", "left", "n", "taken")  # fmt: skip

    def __init__(
        self,
        left: int,
        n: int,
        context: int,
        base: float,
        kv: float,
        gap: float,
        last_end: float,
        busy: float,
        itl_total: float,
        bounds: Sequence[float],
        blocks: Sequence[int],
    ) -> None:
        if left < 0 or n <= 0:
            raise ValueError("a DecodeRun needs left >= 0 and n > 0")
        if len(blocks) != left:
            raise ValueError("a DecodeRun needs the blocks of each of its left steps")
        self._blocks = list(blocks)
        self.blocks_taken = 0
        self.left, self.n, self.context, self.base, self.kv = left, n, context, base, kv
        self.gap, self.last_end, self.busy, self.itl_total = gap, last_end, busy, itl_total
        self._bounds = tuple(bounds)
        self.adds = [0] * (len(self._bounds) + 1)
        self.taken = 0
        self.halted = 0

    def halt(self) -> None:
        """Take no more steps; the step taken last is still delivered at its event."""
        self.halted = 1

    def step(self, now: float) -> float:
        """Take the next step from ``now``; returns its end."""
        self.left -= 1
        self.context += self.n
        duration = self.base + self.kv * self.context
        end = now + duration
        self.last_end = end
        self.blocks_taken += self._blocks[self.taken]
        self.taken += 1
        self.busy += duration
        self.adds[bisect_left(self._bounds, duration)] += self.n
        self.itl_total += duration * self.n
        self.gap = end - now
        return end


class EventQueue(Protocol):
    def push(self, at: float, handler: Handler, payload: Any, /) -> None: ...

    def pop(self) -> tuple[float, Handler, Any]: ...

    def next_time(self) -> float: ...

    def __len__(self) -> int: ...

    def push_run(self, at: float, handler: Handler, payload: Any, run: Any, /) -> None: ...

    def pop_before(self, limit: float, /) -> tuple[float, Handler, Any] | None: ...

    def add_gaps(self, gaps: list[float], /) -> None: ...

    def take_gaps(self) -> array[float]: ...


class PythonEventHeap:
    """heapq over (time, push number, handler, payload, run or None)."""

    __slots__ = ("_events", "_gaps", "_pushed")

    def __init__(self) -> None:
        self._events: list[tuple[float, int, Handler, Any, PythonDecodeRun | None]] = []
        self._pushed = 0
        self._gaps: array[float] = array("d")

    def push(self, at: float, handler: Handler, payload: Any, /) -> None:
        self._push(at, handler, payload, None)

    def push_run(self, at: float, handler: Handler, payload: Any, run: PythonDecodeRun, /) -> None:
        if not isinstance(run, PythonDecodeRun):
            raise TypeError("push_run: run must be a DecodeRun")
        self._push(at, handler, payload, run)

    def _push(self, at: float, handler: Handler, payload: Any, run: PythonDecodeRun | None) -> None:
        if at != at:
            raise ValueError("an event's time cannot be NaN")
        heapq.heappush(self._events, (at, self._pushed, handler, payload, run))
        self._pushed += 1

    def pop(self) -> tuple[float, Handler, Any]:
        if not self._events:
            raise IndexError("pop from an empty event heap")
        at, _, handler, payload, run = heapq.heappop(self._events)
        if run is not None:  # popped here, a run's event ends the run: its last step delivered
            self._gaps.extend([run.gap] * run.n)
            run.left = 0
        return at, handler, payload

    def pop_before(self, limit: float, /) -> tuple[float, Handler, Any] | None:
        events = self._events
        while events and events[0][0] < limit:
            at, _, handler, payload, run = heapq.heappop(events)
            if run is None:
                return at, handler, payload
            self._gaps.extend([run.gap] * run.n)
            if run.halted or run.left <= 0:
                run.left = 0
                return at, handler, payload
            self._push(run.step(at), handler, payload, run)
        return None

    def add_gaps(self, gaps: list[float], /) -> None:
        self._gaps.extend(gaps)

    def take_gaps(self) -> array[float]:
        gaps, self._gaps = self._gaps, array("d")
        return gaps

    def next_time(self) -> float:
        return self._events[0][0] if self._events else math.inf

    def __len__(self) -> int:
        return len(self._events)


# A run for the queue `new_event_queue` gives (the compiled queue takes only its own kind).
new_decode_run: Callable[..., DecodeRun] = (
    PythonDecodeRun if _CompiledDecodeRun is None else _CompiledDecodeRun
)


def new_event_queue() -> EventQueue:
    if _CompiledEventHeap is None:
        warn_python_fallback(EVENT_QUEUE, "about 1 us more per simulated event")
        return PythonEventHeap()
    return _CompiledEventHeap()
