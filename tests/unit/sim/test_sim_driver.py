"""The real-time engine driver on the event loop."""

from __future__ import annotations

import asyncio

from epp.kvevents import KVEvent
from epp.sim.driver import EngineDriver
from epp.sim.engine import Engine, Request
from epp.sim.profiles import TINY_TEST

# Only bounds a hang: the request runs in a few simulated milliseconds.
HANG_GUARD_SECONDS = 10


async def test_a_request_submitted_while_kv_events_are_published_is_run() -> None:
    """The driver awaits the KV-event sink between stepping and going idle; a request submitted
    during that await must wake it (it used to clear that wake-up and sleep until the next one)."""
    engine = Engine(TINY_TEST, "m", record_kv_events=True)
    late = Request("late", [1, 2, 3], 1, 0.0)
    unsubmitted = [late]
    finished = asyncio.Event()

    async def sink(events: list[KVEvent], timestamp: float) -> None:
        await asyncio.sleep(0)  # a socket send yields to the loop
        if unsubmitted:
            assert driver.submit(unsubmitted.pop(), finished.set) is None

    driver = EngineDriver(engine, time_scale=0.01, kv_event_sink=sink)
    driver.start()
    try:
        assert engine.reset_prefix_cache()  # records AllBlocksCleared: the next idle step publishes it
        driver.wake()
        await asyncio.wait_for(finished.wait(), HANG_GUARD_SECONDS)
    finally:
        await driver.stop()
    assert late.output_done == 1


async def test_stop_while_a_wake_up_arrives_during_a_timed_idle_wait() -> None:
    """An idle engine holding a prefill lease waits for its wake-up or the lease's expiry. A stop
    arriving as the wake-up does (a request aborted as the simulator stops) must end the loop:
    under asyncio.wait_for (Python 3.11) the cancellation was dropped and stop() waited for ever."""
    engine = Engine(TINY_TEST, "m", lease_seconds=3600.0)
    leg = Request("p", list(range(40)), 1, 0.0, hold_blocks=True)
    finished = asyncio.Event()
    driver = EngineDriver(engine, time_scale=0.01)
    driver.start()
    loop_task = driver._task
    assert loop_task is not None
    try:
        assert driver.submit(leg, finished.set) is None
        await asyncio.wait_for(finished.wait(), HANG_GUARD_SECONDS)
        assert engine.next_timer() is not None  # the lease: the idle wait has a timeout
        for _ in range(3):
            await asyncio.sleep(0)  # the driver waits, idle
        driver.wake()  # in the same loop iteration as stop()'s cancellation
        async with asyncio.timeout(2):
            await driver.stop()
        assert loop_task.cancelled()
    finally:
        loop_task.cancel()
