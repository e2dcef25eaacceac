"""The model-clock asyncio loop: timers fire in model time, without waiting in wall time."""

from __future__ import annotations

import asyncio
import time

import pytest

from epp.bench.vloop import VirtualTimeLoop


class Clock:
    now = 0.0


def test_sleeps_and_timeouts_run_on_the_model_clock_at_once() -> None:
    clock = Clock()
    loop = VirtualTimeLoop(clock)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        woke.append((name, loop.time()))

    async def main() -> None:
        await asyncio.gather(sleeper("late", 3600.0), sleeper("early", 1.5))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(60.0):
                await asyncio.Event().wait()

    started = time.monotonic()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert time.monotonic() - started < 5.0
    assert woke == [("early", pytest.approx(1.5)), ("late", pytest.approx(3600.0))]
    assert clock.now == pytest.approx(3660.0)


def test_waiting_for_nothing_is_an_error_not_a_hang() -> None:
    loop = VirtualTimeLoop(Clock())
    try:
        with pytest.raises(RuntimeError, match="nothing scheduled and nothing to wait for"):
            loop.run_until_complete(asyncio.Event().wait())
    finally:
        loop.close()
