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

from epp.bench._eventheap import DecodeRun, EventHeap
from epp.bench.events import PythonDecodeRun, PythonEventHeap
from epp.sim.histogram import ITL_BUCKETS

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


# a run: (blocks of each step it may take, batch size, decode context, base, kv, first gap,
# halt after k pops or never)
runs = st.tuples(
    st.lists(st.integers(0, 3), max_size=12),
    st.integers(1, 9),
    st.integers(0, 5000),
    st.floats(1e-3, 1e-2),
    st.floats(1e-8, 1e-6),
    st.floats(0.0, 0.05),
    st.one_of(st.none(), st.integers(0, 6)),
)
# an operation: push an ordinary event, push a run's event, add gaps, or pop before a limit
run_operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.floats(0.0, 1.0)),
        st.tuples(st.just("run"), st.floats(0.0, 1.0), runs),
        st.tuples(st.just("gaps"), st.lists(st.floats(0.0, 1.0), max_size=5)),
        st.tuples(st.just("pop"), st.one_of(st.floats(0.0, 2.0), st.just(math.inf))),
    ),
    max_size=120,
)


def run_state(run: Any) -> tuple[Any, ...]:
    return (
        run.left, run.taken, run.blocks_taken, run.context, run.last_end, run.busy, run.itl_total,
        run.adds, run.halted,
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(run_operations)
def test_decode_runs_take_the_same_steps_in_the_same_order_as_the_reference(ops: list[Any]) -> None:
    """Runs' steps interleave with ordinary events by (time, push order) exactly as the Python
    reference steps them: the same events handed out, the same gaps in the same order, the same
    doubles in every run's sums, a halted run handing its event back after delivering its step."""
    compiled, python = EventHeap(), PythonEventHeap()
    pairs: list[tuple[Any, PythonDecodeRun, int | None]] = []
    pops = 0
    for number, op in enumerate(ops):
        if op[0] == "push":
            compiled.push(op[1], handler, number)
            python.push(op[1], handler, number)
        elif op[0] == "run":
            blocks, n, context, base, kv, gap, halt_after = op[2]
            args = (len(blocks), n, context, base, kv, gap, op[1], 1.5, 0.25, ITL_BUCKETS, blocks)
            halt_at = None if halt_after is None else pops + halt_after
            pair = (DecodeRun(*args), PythonDecodeRun(*args), halt_at)
            pairs.append(pair)
            compiled.push_run(op[1], handler, number, pair[0])
            python.push_run(op[1], handler, number, pair[1])
        elif op[0] == "gaps":
            compiled.add_gaps(op[1])
            python.add_gaps(op[1])
        else:
            pops += 1
            for c_run, py_run, halt_at in pairs:
                if halt_at is not None and pops >= halt_at:
                    c_run.halt()
                    py_run.halt()
            assert compiled.pop_before(op[1]) == python.pop_before(op[1])
        assert len(compiled) == len(python)
        assert compiled.next_time() == python.next_time()
    while len(python):
        assert compiled.pop() == python.pop()
    for c_run, py_run, _ in pairs:
        assert run_state(c_run) == run_state(py_run)
    assert compiled.take_gaps().tobytes() == python.take_gaps().tobytes()
    assert len(compiled.take_gaps()) == 0


def test_a_run_steps_as_the_engine_prices_a_cohort_step() -> None:
    """Each step: the context grows by the batch, lasts base + kv * context, its gap delivered
    at the next event, n times; the histogram bucket by bisect_left of the bounds."""
    for queue, kind in ((EventHeap(), DecodeRun), (PythonEventHeap(), PythonDecodeRun)):
        run = kind(2, 3, 100, 0.5, 0.01, 0.125, 1.0, 0.0, 0.0, (1.0, 2.0), [1, 2])
        queue.push_run(1.0, handler, "engine", run)
        queue.push(10.0, handler, "later")
        first, second = 0.5 + 0.01 * 103, 0.5 + 0.01 * 106
        end = 1.0 + first + second
        assert queue.pop_before(math.inf) == (end, handler, "engine")  # its last step's event
        assert (run.taken, run.context, run.left, run.blocks_taken) == (2, 106, 0, 3)
        assert run.busy == 0.0 + first + second and run.adds == [0, 6, 0]
        assert run.last_end == end and run.itl_total == 0.0 + first * 3 + second * 3
        gaps = [0.125] * 3 + [(1.0 + first) - 1.0] * 3 + [end - (1.0 + first)] * 3
        assert list(queue.take_gaps()) == gaps
        assert queue.pop_before(math.inf) == (10.0, handler, "later")
        assert queue.pop_before(math.inf) is None


def test_run_refusals() -> None:
    for queue, kind in ((EventHeap(), DecodeRun), (PythonEventHeap(), PythonDecodeRun)):
        with pytest.raises(ValueError, match="left >= 0 and n > 0"):
            kind(1, 0, 0, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, (), [0])
        with pytest.raises(ValueError, match="blocks of each of its left steps"):
            kind(2, 1, 0, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, (), [0])
        with pytest.raises(TypeError, match="must be a DecodeRun"):
            queue.push_run(1.0, handler, None, object())  # type: ignore[arg-type]
