"""Every endpoint's scraped waiting queue and KV-cache usage as arrays, one row per endpoint.

Over a thousand candidates, reading `endpoint.metrics.<field>` per candidate is most of what the
queue and KV-cache scorers cost. Instead each `Endpoint` owns a row, written when it is given a
metrics object (every scrape) and when a column field of that object is set in place; a
decision gathers its candidates' rows with one numpy index (the row indices of a candidate list
are kept while the list holds the same endpoints). Rows are not reused: 16 bytes for every
endpoint the process ever created.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

COLUMN_FIELDS = frozenset({"waiting_queue_size", "kv_cache_usage"})
_MAX_LISTS = 8  # candidate lists in use at once: one per profile's filter outcome, typically


class HasRow(Protocol):
    """An endpoint (epp.datastore.endpoint, which imports this module)."""

    @property
    def column_row(self) -> int: ...


class _Table:
    def __init__(self) -> None:
        self.columns = {name: np.zeros(1024, dtype=np.float64) for name in COLUMN_FIELDS}
        self.rows = 0

    def allocate(self) -> int:
        row = self.rows
        self.rows += 1
        size = len(self.columns["kv_cache_usage"])
        if row >= size:
            for name, column in self.columns.items():
                grown = np.zeros(2 * size, dtype=np.float64)
                grown[:size] = column
                self.columns[name] = grown
        return row


_table = _Table()
_lists: dict[tuple[int, int, int], tuple[list[HasRow], np.ndarray]] = {}


def allocate_row() -> int:
    return _table.allocate()


def write_row(row: int, waiting_queue_size: float, kv_cache_usage: float) -> None:
    columns = _table.columns
    columns["waiting_queue_size"][row] = waiting_queue_size
    columns["kv_cache_usage"][row] = kv_cache_usage


def write_rows(rows: tuple[int, ...], name: str, value: Any) -> None:
    column = _table.columns[name]
    for row in rows:
        column[row] = value


def _rows_of(candidates: Sequence[HasRow]) -> np.ndarray:
    key = (len(candidates), id(candidates[0]), id(candidates[-1])) if candidates else (0, 0, 0)
    known = _lists.get(key)
    # list equality compares endpoints by identity (Endpoint defines no __eq__): a C-level scan
    if known is not None and known[0] == candidates:
        return known[1]
    rows = np.fromiter((e.column_row for e in candidates), dtype=np.intp, count=len(candidates))
    if len(_lists) >= _MAX_LISTS and key not in _lists:
        _lists.clear()
    _lists[key] = (list(candidates), rows)
    return rows


def column(candidates: Sequence[HasRow], name: str) -> np.ndarray:
    """The candidates' `name` (one of COLUMN_FIELDS) as a new float64 array, in candidate order."""
    return _table.columns[name][_rows_of(candidates)]
