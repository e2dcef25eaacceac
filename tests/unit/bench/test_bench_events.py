"""The virtual-time run's event queue in C (`_eventheap.c`) against heapq (`PythonEventHeap`, the
reference): the same events in the same order, ties in push order (equal times, -0.0 and 0.0,
infinity), through growth; NaN and an empty pop refused alike; references released on pop and
dealloc, and a cycle through the queue collected. Skipped when the extension is not built."""

from __future__ import annotations

import gc
import math
import sys
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("epp.bench._eventheap")

from epp.bench._eventheap import EventHeap
from epp.bench.events import PythonEventHeap

times = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.5, math.inf, -math.inf]), st.floats(-1e6, 1e6))
# an operation: a time to push at, or None to pop (when anything is queued)
operations = st.lists(st.one_of(times, st.none()), max_size=400)


def handler(now: float, payload: Any) -> None:
    """A handler to push (never called here)."""


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_same_events_in_the_same_order_as_heapq(steps: list[float | None]) -> None:
    compiled, python = EventHeap(), PythonEventHeap()
    for number, at in enumerate(steps):
        if at is None:
            if len(python):
                got, expected = compiled.pop(), python.pop()
                assert got == expected and got[2] is expected[2]
                assert math.copysign(1.0, got[0]) == math.copysign(1.0, expected[0])
        else:
            payload = (number, at)
            compiled.push(at, handler, payload)
            python.push(at, handler, payload)
        assert len(compiled) == len(python)
        assert compiled.next_time() == python.next_time()
    while len(python):
        assert compiled.pop() == python.pop()
    assert compiled.next_time() == math.inf and len(compiled) == 0


def test_refusals_are_the_same() -> None:
    for queue in (EventHeap(), PythonEventHeap()):
        with pytest.raises(IndexError, match="empty event heap"):
            queue.pop()
        with pytest.raises(ValueError, match="cannot be NaN"):
            queue.push(math.nan, handler, None)
        assert len(queue) == 0
    with pytest.raises(TypeError):
        EventHeap().push("1.0", handler, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes 3 arguments"):
        EventHeap().push(1.0, handler)  # type: ignore[call-arg]


def test_references_are_released_on_pop_and_when_the_queue_goes() -> None:
    payload = object()
    before = sys.getrefcount(payload)
    queue = EventHeap()
    for n in range(1000):  # grows its array several times
        queue.push(float(n % 7), handler, payload)
    assert sys.getrefcount(payload) == before + 1000
    for _ in range(500):
        queue.pop()
    assert sys.getrefcount(payload) == before + 500
    del queue
    assert sys.getrefcount(payload) == before


def test_a_cycle_through_the_queue_is_collected() -> None:
    class Run:
        def __init__(self) -> None:
            self.events = EventHeap()
            self.events.push(1.0, self.step, None)  # the bound method refers back to the run

        def step(self, now: float, payload: Any) -> None:
            """An event handler."""

    run = Run()
    gone = weakref.ref(run)
    del run
    gc.collect()
    assert gone() is None
