"""Every endpoint's scraped waiting queue and KV-cache usage as arrays, one row per endpoint.

Over a thousand candidates, reading `endpoint.metrics.<field>` per candidate is most of what the
queue and KV-cache scorers cost. Instead each `Endpoint` owns a row, written when it is given a
metrics object (every scrape) and when a column field of that object is set in place; a
decision gathers its candidates' rows with one numpy index (the row indices of a candidate list,
each candidate's position in it and, once asked for, the candidates by `host:port` are kept while
the list holds the same endpoints). Rows
are not reused: 16 bytes for every endpoint the process ever created.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

COLUMN_FIELDS = frozenset({"waiting_queue_size", "kv_cache_usage"})
_MAX_LISTS = 8  # candidate lists in use at once: one per profile's filter outcome, typically


class HasRow(Protocol):
    """An endpoint (epp.datastore.endpoint, which imports this module)."""

    @property
    def column_row(self) -> int: ...

    @property
    def hostport(self) -> str: ...


E = TypeVar("E", bound=HasRow)


class _Table:
    """One `array('d')` per column: a row write is a C-level store, cheaper than numpy's."""

    def __init__(self) -> None:
        self.waiting_queue_size = array("d")
        self.kv_cache_usage = array("d")

    def allocate(self) -> int:
        row = len(self.kv_cache_usage)
        self.waiting_queue_size.append(0.0)
        self.kv_cache_usage.append(0.0)
        return row


_table = _Table()


def allocate_row() -> int:
    return _table.allocate()


def write_row(row: int, waiting_queue_size: float, kv_cache_usage: float) -> None:
    _table.waiting_queue_size[row] = waiting_queue_size
    _table.kv_cache_usage[row] = kv_cache_usage


def write_rows(rows: tuple[int, ...], name: str, value: Any) -> None:
    values: array[float] = getattr(_table, name)
    for row in rows:
        values[row] = value


class _CandidateList:
    """What is kept of a candidate list: its endpoints (to recognise it), their rows, each
    endpoint's position in it, and the endpoints by `host:port` once asked for."""

    __slots__ = ("by_hostport", "endpoints", "positions", "rows")

    def __init__(self, candidates: Sequence[HasRow]) -> None:
        self.endpoints = list(candidates)
        self.rows = np.fromiter((e.column_row for e in candidates), dtype=np.intp, count=len(candidates))
        self.positions = {e: i for i, e in enumerate(candidates)}
        self.by_hostport: dict[str, Any] | None = None


_lists: dict[tuple[int, int, int], _CandidateList] = {}


def _known(candidates: Sequence[HasRow]) -> _CandidateList:
    key = (len(candidates), id(candidates[0]), id(candidates[-1])) if candidates else (0, 0, 0)
    known = _lists.get(key)
    # list equality compares endpoints by identity (Endpoint defines no __eq__): a C-level scan
    if known is not None and known.endpoints == candidates:
        return known
    if len(_lists) >= _MAX_LISTS and key not in _lists:
        _lists.clear()
    known = _lists[key] = _CandidateList(candidates)
    return known


def positions(candidates: Sequence[HasRow]) -> Mapping[HasRow, int]:
    """Each candidate's index in `candidates` (fewer entries than candidates: one is listed twice)."""
    return _known(candidates).positions


def by_hostport(candidates: Sequence[E]) -> Mapping[str, E]:
    """The candidates by `host:port` (the KV-event pod names)."""
    known = _known(candidates)
    if known.by_hostport is None:
        known.by_hostport = {e.hostport: e for e in candidates}
    return known.by_hostport


def column(candidates: Sequence[HasRow], name: str) -> np.ndarray:
    """The candidates' `name` (one of COLUMN_FIELDS) as a new float64 array, in candidate order."""
    table, rows = column_rows(candidates, name)
    # a view for the gather only: the table can grow again once it is dropped
    return np.frombuffer(table, dtype=np.float64)[rows]


def column_rows(candidates: Sequence[HasRow], name: str) -> tuple[array[float], np.ndarray]:
    """Every endpoint's `name` (one of COLUMN_FIELDS) and the candidates' rows in it (intp), for
    a caller that gathers them itself: `column` is `table[rows]`. The table is valid until the
    next endpoint is created (it may grow then)."""
    return getattr(_table, name), _known(candidates).rows
