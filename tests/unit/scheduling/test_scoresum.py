"""A profile's totals and their best in C (`_scoresum`) against the numpy versions they stand in
for (`_weighted_totals`, the fallback, and numpy's own maximum and `==`): the same doubles, signs
of zeros included, for scores in and out of [0, 1], NaN and infinities; the same tied positions.
Rows that are no contiguous float64 arrays go the numpy way. Skipped when the extension is not
built."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("epp.scheduling._scoresum")

from epp.datastore import EndpointMetrics
from epp.plugins.max_score_picker import MaxScorePicker
from epp.scheduling import scoring
from epp.scheduling._scoresum import complement, max_ties, min_max, weighted_sum
from tests.unit.plugin_helpers import context, endpoints, plugin, request

WILD = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, 1.5, -2.0, 5e-324, 1 - 2**-53]
scores = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WILD))
weights = st.one_of(st.floats(min_value=-10, max_value=10), st.sampled_from([0.0, 1.0, 2.0, 3.0, 0.7]))


def numpy_totals(rows: list[np.ndarray], row_weights: tuple[float, ...], count: int) -> np.ndarray:
    return scoring._weighted_totals([row.copy() for row in rows], row_weights, count)


def numpy_ties(totals: np.ndarray) -> list[int]:
    return list((totals == np.maximum.reduce(totals)).nonzero()[0].tolist())


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(min_value=1, max_value=300), st.lists(weights, min_size=0, max_size=5))
def test_the_totals_are_numpys(data: st.DataObject, count: int, row_weights: list[float]) -> None:
    rows = [np.array(data.draw(st.lists(scores, min_size=count, max_size=count))) for _ in row_weights]
    out = np.full(count, 7.0)
    with np.errstate(all="ignore"):
        assert weighted_sum(rows, tuple(row_weights), out) is True
        expected = numpy_totals(rows, tuple(row_weights), count)
    assert [repr(t) for t in out.tolist()] == [repr(t) for t in expected.tolist()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.5, math.nan]), st.floats()), max_size=200))
def test_the_ties_are_numpys(values: list[float]) -> None:
    totals = np.array(values, dtype=np.float64)
    assert max_ties(totals) == (numpy_ties(totals) if values else [])


def test_ties_many_equal_and_in_order() -> None:
    totals = np.array([1.0, 3.0, 0.5, 3.0, -0.0, 3.0])
    assert max_ties(totals) == [1, 3, 5]
    assert max_ties(np.zeros(1000)) == list(range(1000))
    assert max_ties(np.array([2.0, math.nan, 2.0])) == []


@pytest.mark.parametrize(
    "row",
    [
        np.ones(10, dtype=np.float32),  # not doubles
        np.ones(10, dtype=np.int64),
        np.ones(20)[::2],  # not contiguous
        np.ones(11),  # not the length of `out`
        np.ones((2, 5)),  # not one-dimensional
        [1.0] * 10,  # no buffer
    ],
)
def test_rows_that_are_no_contiguous_doubles_are_refused(row: object) -> None:
    out = np.full(10, 7.0)
    assert weighted_sum([np.ones(10), row], (1.0, 1.0), out) is False  # type: ignore[list-item]
    assert out.tolist() == [7.0] * 10  # untouched


@pytest.mark.parametrize(
    "scores", [np.ones(10, dtype=np.float32), np.ones(20)[::2], np.ones((2, 5)), [1.0] * 10, b"12345678"]
)
def test_scores_that_are_no_contiguous_doubles_get_no_ties(scores: object) -> None:
    assert max_ties(scores) is None  # type: ignore[arg-type]


def test_weights_must_match_the_rows() -> None:
    with pytest.raises(ValueError, match="1 weights for 2 rows"):
        weighted_sum([np.ones(3), np.ones(3)], (1.0,), np.empty(3))
    with pytest.raises(TypeError):
        weighted_sum([np.ones(3)], ("heavy",), np.empty(3))  # type: ignore[arg-type]


def test_a_read_only_out_is_refused() -> None:
    out = np.zeros(3)
    out.flags.writeable = False
    assert weighted_sum([np.ones(3)], (1.0,), out) is False


def test_refused_rows_are_summed_by_numpy() -> None:
    """`weighted_totals` gives float32 and strided rows to the numpy path, with numpy's result."""
    rows = [np.linspace(-1, 2, 300)[::2].copy(), np.linspace(0, 1, 150, dtype=np.float32)]
    expected = scoring._weighted_totals(rows, (2.0, 3.0), 150)
    assert scoring.weighted_totals(rows, (2.0, 3.0), 150).tolist() == expected.tolist()
    strided = [np.linspace(-1, 2, 300)[::2]]
    assert (
        scoring.weighted_totals(strided, (2.0,), 150).tolist()
        == scoring._weighted_totals([strided[0].copy()], (2.0,), 150).tolist()
    )


def test_without_the_extension_numpy_gives_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    rows = [rng.uniform(-0.5, 1.5, 500) for _ in range(4)]
    row_weights = (3.0, 2.0, 2.0, 2.0)
    compiled = scoring.weighted_totals(rows, row_weights, 500)
    ties = scoring.max_ties(np.round(compiled, 1))
    monkeypatch.setattr(scoring, "_compiled_weighted_sum", None)
    monkeypatch.setattr(scoring, "_compiled_max_ties", None)
    assert scoring.weighted_totals(rows, row_weights, 500).tolist() == compiled.tolist()
    assert scoring.max_ties(np.round(compiled, 1)) == ties
    assert scoring.weighted_totals([], (), 4).tolist() == [0.0] * 4


def numpy_min_max(values: np.ndarray) -> np.ndarray:
    low, high = np.minimum.reduce(values), np.maximum.reduce(values)
    if high == low:
        return np.ones(len(values))
    return (high - values) / (high - low)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, 3.0, math.nan, math.inf])), min_size=1
    )
)
def test_min_max_is_numpys(values: list[float]) -> None:
    array = np.array(values)
    out = np.full(len(values), 7.0)
    with np.errstate(all="ignore"):
        assert min_max(array, out) is True
        expected = numpy_min_max(array)
    assert np.array_equal(out, expected, equal_nan=True)
    # the same doubles (array_equal took the zeros: only their sign may differ, where the values
    # hold both 0.0 and -0.0)
    assert [repr(v) for v in out.tolist() if v != 0] == [repr(v) for v in expected.tolist() if v != 0]


def test_min_max_queue_sizes() -> None:
    waiting = np.array([3.0, 0.0, 7.0, 3.0])
    out = np.empty(4)
    assert min_max(waiting, out) is True
    assert out.tolist() == [4 / 7, 1.0, 0.0, 4 / 7]
    assert min_max(np.full(5, 2.0), out := np.zeros(5)) is True and out.tolist() == [1.0] * 5
    assert min_max(waiting, waiting) is True and waiting.tolist() == [4 / 7, 1.0, 0.0, 4 / 7]  # in place


@pytest.mark.parametrize(
    ("values", "out"),
    [
        (np.ones(3, dtype=np.float32), np.empty(3)),
        (np.ones(3), np.empty(4)),
        (np.ones(6)[::2], np.empty(3)),
        (np.empty(0), np.empty(0)),
        ([1.0, 2.0], np.empty(2)),
    ],
)
def test_min_max_refuses_what_is_no_pair_of_double_arrays(values: object, out: np.ndarray) -> None:
    before = out.copy()
    assert min_max(values, out) is False  # type: ignore[arg-type]
    assert np.array_equal(out, before, equal_nan=True)


def test_min_max_score_array_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [4.0, 1.0, 9.0, 1.0, 0.5] * 40
    compiled = scoring.min_max_score_array(values)
    with pytest.raises(ValueError):  # numpy's: no lowest of nothing
        scoring.min_max_score_array([])
    monkeypatch.setattr(scoring, "_compiled_min_max", None)
    assert scoring.min_max_score_array(values).tolist() == compiled.tolist()
    assert scoring.min_max_score_array(np.array(values)).tolist() == scoring.min_max_scores(values)
    with pytest.raises(ValueError):  # numpy's: no lowest of nothing
        scoring.min_max_score_array([])


@settings(max_examples=200, deadline=None)
@given(
    st.data(), st.lists(st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, 0.5, 1.0])), min_size=1)
)
def test_gathered_min_max_and_complement_are_numpys(data: st.DataObject, table_values: list[float]) -> None:
    table = array("d", table_values)
    rows = np.array(
        data.draw(st.lists(st.integers(0, len(table_values) - 1), min_size=1, max_size=50)), dtype=np.intp
    )
    gathered = np.frombuffer(table, dtype=np.float64)[rows]
    out = np.full(len(rows), 7.0)
    with np.errstate(all="ignore"):
        assert min_max(table, out, rows) is True
        expected = numpy_min_max(gathered)
    assert np.array_equal(out, expected, equal_nan=True)
    assert [repr(v) for v in out.tolist() if v != 0] == [repr(v) for v in expected.tolist() if v != 0]
    assert complement(table, out, rows) is True
    assert [repr(v) for v in out.tolist()] == [repr(v) for v in (1.0 - gathered).tolist()]
    assert complement(gathered, out) is True  # without rows: the values themselves
    assert [repr(v) for v in out.tolist()] == [repr(v) for v in (1.0 - gathered).tolist()]


@pytest.mark.parametrize(
    "rows",
    [
        np.array([0, 3], dtype=np.intp),  # past the table
        np.array([-1, 0], dtype=np.intp),  # numpy would read from the end: refused here
        np.array([0, 1], dtype=np.int32),  # not intp
        np.array([0, 1, 2], dtype=np.intp),  # not the length of `out`
        np.array([0, 0, 1, 1], dtype=np.intp)[::2],  # not contiguous
        [0, 1],  # no buffer
    ],
)
def test_rows_outside_the_table_or_of_another_kind_are_refused(rows: object) -> None:
    table = array("d", [1.0, 2.0, 3.0])
    out = np.full(2, 7.0)
    assert min_max(table, out, rows) is False  # type: ignore[arg-type]
    assert complement(table, out, rows) is False  # type: ignore[arg-type]
    assert out.tolist() == [7.0, 7.0]


def test_the_scorers_columns_with_and_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = endpoints(300)
    for number, endpoint in enumerate(pool):
        endpoint.metrics = EndpointMetrics(waiting_queue_size=number % 7, kv_cache_usage=(number % 11) / 10)
    candidates = pool[::-1][:200]  # another order, and not every endpoint
    queue = scoring.min_max_score_column(candidates, "waiting_queue_size")
    free = scoring.complement_column(candidates, "kv_cache_usage")
    assert queue.tolist() == scoring.min_max_scores([e.metrics.waiting_queue_size for e in candidates])
    assert free.tolist() == [1.0 - e.metrics.kv_cache_usage for e in candidates]
    monkeypatch.setattr(scoring, "_compiled_min_max", None)
    monkeypatch.setattr(scoring, "_compiled_complement", None)
    assert scoring.min_max_score_column(candidates, "waiting_queue_size").tolist() == queue.tolist()
    assert scoring.complement_column(candidates, "kv_cache_usage").tolist() == free.tolist()


def test_a_weight_that_empties_the_rows_list_cannot_crash_the_sum() -> None:
    """A weight's `__float__` is Python code run before the rows are read: one that emptied the
    caller's list made `weighted_sum` read the list's freed item array (a segfault). The rows are
    now held for the call, so the sum is of the rows as passed. In a child process: a crash must
    fail this test, not end the run."""
    code = textwrap.dedent(
        """
        import numpy as np
        from epp.scheduling._scoresum import weighted_sum
        rows = [np.full(3, 0.5), np.full(3, 0.25)]
        class Emptying:
            def __float__(self):
                rows.clear()
                return 2.0
        out = np.empty(3)
        print(weighted_sum(rows, (Emptying(), 4.0), out), out.tolist())
        """
    )
    root = Path(scoring.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True [2.0, 2.0, 2.0]"


@contextmanager
def numpy_only() -> Iterator[None]:
    """The module as without the extension (a context manager, not monkeypatch: Hypothesis runs
    many examples per test function)."""
    names = ("_compiled_weighted_sum", "_compiled_max_ties", "_compiled_min_max", "_compiled_complement")
    saved = {name: getattr(scoring, name) for name in names}
    for name in names:
        setattr(scoring, name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(scoring, name, value)


LAYOUTS = ["plain", "float32", "big-endian", "strided", "read-only", "int64"]


def laid_out(values: list[float], layout: str) -> np.ndarray:
    """`values` as one of the arrays a scorer or caller may hand over, of `len(values)` items."""
    plain = np.array(values, dtype=np.float64)
    if layout == "float32":
        with np.errstate(all="ignore"):
            return plain.astype(np.float32)
    if layout == "big-endian":
        return plain.astype(">f8")
    if layout == "strided":
        wide = np.full(2 * len(values), 9.0)
        wide[::2] = plain
        return wide[::2]
    if layout == "read-only":
        plain.flags.writeable = False
        return plain
    if layout == "int64":
        return np.array([0 if not math.isfinite(v) else int(max(min(v, 1e6), -1e6)) for v in values])
    return plain


def same_doubles(got: np.ndarray, expected: np.ndarray) -> bool:
    return [repr(v) for v in got.tolist()] == [repr(v) for v in expected.tolist()]


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.integers(min_value=0, max_value=40),
    # not int64 rows alone: numpy's clamp cannot write floats into them, with or without C
    st.lists(st.tuples(weights, st.sampled_from([kind for kind in LAYOUTS if kind != "int64"])), max_size=4),
)
def test_weighted_totals_with_and_without_the_extension_on_any_layout(
    data: st.DataObject, count: int, layout: list[tuple[float, str]]
) -> None:
    """Empty, length-1, float32, big-endian, strided and read-only rows: `weighted_totals`
    gives the same doubles with the extension (C, or numpy for the rows C refuses) as without."""
    rows = [laid_out(data.draw(st.lists(scores, min_size=count, max_size=count)), kind) for _, kind in layout]
    row_weights = tuple(w for w, _ in layout)
    with np.errstate(all="ignore"):
        compiled = scoring.weighted_totals(rows, row_weights, count)
        with numpy_only():
            fallback = scoring.weighted_totals(rows, row_weights, count)
    assert compiled.shape == (count,) and same_doubles(compiled, fallback)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.5, math.nan, math.inf]), st.floats()), min_size=1),
    st.sampled_from(["plain", "big-endian", "strided", "read-only"]),
)
def test_max_ties_with_and_without_the_extension_on_any_layout(values: list[float], layout: str) -> None:
    totals = laid_out(values, layout)
    with numpy_only():
        fallback = scoring.max_ties(totals)
    assert scoring.max_ties(totals) == fallback


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, 3.0, math.nan])), max_size=40),
    st.sampled_from([*LAYOUTS, "list"]),
)
def test_min_max_score_array_with_and_without_the_extension(values: list[float], layout: str) -> None:
    given_values: list[float] | np.ndarray = values if layout == "list" else laid_out(values, layout)
    with np.errstate(all="ignore"):
        with numpy_only():
            try:
                fallback = scoring.min_max_score_array(given_values)
            except ValueError:  # numpy's: no lowest of nothing
                with pytest.raises(ValueError):
                    scoring.min_max_score_array(given_values)
                return
        compiled = scoring.min_max_score_array(given_values)
    assert np.array_equal(compiled, fallback, equal_nan=True)  # a zero's sign aside (documented)
    assert [repr(v) for v in compiled.tolist() if v != 0] == [repr(v) for v in fallback.tolist() if v != 0]


@pytest.mark.parametrize("seed", range(5))
def test_max_score_picker_breaks_a_tie_the_same_with_and_without_the_extension(seed: int) -> None:
    """The same tied positions in the same order: the seeded picker draws the same winner."""
    candidates = endpoints(300)
    totals = np.array([float(i % 7 == 3) for i in range(300)])
    compiled = [plugin(MaxScorePicker, ctx=context(seed=seed)).pick_array(request(), candidates, totals)]
    with numpy_only():
        fallback = [plugin(MaxScorePicker, ctx=context(seed=seed)).pick_array(request(), candidates, totals)]
    listed = [plugin(MaxScorePicker, ctx=context(seed=seed)).pick(request(), candidates, totals.tolist())]
    assert compiled == fallback == listed
