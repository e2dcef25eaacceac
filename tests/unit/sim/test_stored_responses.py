"""The simulator's stored responses: the oldest go first past capacity, at the cost of what is
dropped."""

from __future__ import annotations

import time

import pytest

from epp.sim.openai_api import ApiError
from epp.sim.stored_responses import ResponseStore

STORED = 100_000


def cpu_per_keep(store: ResponseStore, first: int, count: int) -> float:
    started = time.process_time()
    for i in range(first, first + count):
        store.keep(f"resp_{i}", [("user", "hi")], {"status": "completed"})
    return (time.process_time() - started) / count


def test_a_full_store_drops_its_oldest_response_as_cheaply_as_it_keeps_one() -> None:
    full, roomy = ResponseStore(STORED), ResponseStore(10 * STORED)
    cpu_per_keep(full, 0, STORED)
    cpu_per_keep(roomy, 0, STORED)
    at_capacity = cpu_per_keep(full, STORED, 50_000)
    with_room = cpu_per_keep(roomy, STORED, 50_000)
    assert len(full) == STORED
    assert full.history(f"resp_{STORED + 49_999}") == [("user", "hi")]
    with pytest.raises(ApiError, match="not found"):
        full.history("resp_49999")
    assert at_capacity < 4 * with_room, (at_capacity, with_room)
