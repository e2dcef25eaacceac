"""PinTable (session affinity's and previous-response affinity's pins): a full table, and its
sweeps, cost what is dropped, not what is kept."""

from __future__ import annotations

import time

from epp.scheduling.session_affinity import PinTable
from tests.unit.plugin_helpers import FakeClock

PINS = 100_000


def cpu_per_set(table: PinTable[int], first_key: int, count: int) -> float:
    started = time.process_time()
    for key in range(first_key, first_key + count):
        table.set(key, "10.0.0.1:8000")
    return (time.process_time() - started) / count


def test_setting_into_a_full_table_costs_what_setting_into_a_roomy_one_does() -> None:
    """At `capacity` every set drops the least recently set pin. Dropped from the front of a
    plain dict, each next one was found past every slot dropped before (until the dict compacts):
    6 to 70 us a set at 100,000 pins, against 0.5 us with room."""
    clock = FakeClock()
    full: PinTable[int] = PinTable(86400, 60, clock, PINS)
    roomy: PinTable[int] = PinTable(86400, 60, clock, 10 * PINS)
    cpu_per_set(full, 0, PINS)
    cpu_per_set(roomy, 0, PINS)
    at_capacity = cpu_per_set(full, PINS, 50_000)
    with_room = cpu_per_set(roomy, PINS, 50_000)
    assert len(full.entries) == PINS
    assert full.get(PINS + 49_999) == "10.0.0.1:8000" and full.get(PINS + 49_999 - PINS) is None
    assert at_capacity < 4 * with_room, (at_capacity, with_room)


def test_a_sweep_drops_the_expired_pins_and_costs_them_only() -> None:
    """Pins are kept in the order they were set, each expiring `ttl` later: the expired ones are
    the oldest. A sweep with none expired was a copy of the whole table (15 ms at 100,000 pins,
    the event loop held)."""
    clock = FakeClock()
    table: PinTable[int] = PinTable(60, 10, clock)
    for key in range(PINS):
        if key == PINS // 2:
            clock.now += 30
        table.set(key, "a")
    table.set(0, "b")  # set again: now the newest
    clock.now += 45  # the first half (set 75 s ago) expired, the second (45 s ago) not
    started = time.process_time()
    table.set(-1, "c")  # sweeps
    sweep = time.process_time() - started
    assert list(table.entries)[:1] == [PINS // 2] and len(table.entries) == PINS // 2 + 2
    assert table.get(0) == "b" and table.get(1) is None
    started = time.process_time()
    clock.now += 11
    table.set(-2, "d")  # sweeps again, nothing expired
    idle_sweep = time.process_time() - started
    assert len(table.entries) == PINS // 2 + 3
    assert idle_sweep < max(sweep / 20, 0.0005), (idle_sweep, sweep)
