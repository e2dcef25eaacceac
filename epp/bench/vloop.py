"""An asyncio event loop that runs on a model clock, for the virtual-time engine.

The EPP's awaited steps (flow control's queue: futures, its dispatch loop's ticks, TTL timeouts)
are ordinary asyncio code. Run on this loop they work unchanged, but time is the simulation's:
`loop.time()` reads the clock, and where a normal loop would block in `select()` until its next
timer, this one moves the clock forward to that timer instead. Nothing ever sleeps, so a run is
as fast as its callbacks and as deterministic as their order.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Protocol


class ModelClock(Protocol):
    """Holds the model time, in seconds; the loop reads and advances it."""

    now: float


class _AdvancingSelector(selectors.DefaultSelector):
    """Polls without blocking (the loop's own wake-up pipe is all it holds), then advances the
    clock by the time the loop would have waited for its next timer."""

    def __init__(self, clock: ModelClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if timeout is None and not ready:
            # Nothing ready and no timer: a real loop would block forever on I/O that never comes.
            raise RuntimeError("virtual-time loop: nothing scheduled and nothing to wait for")
        if timeout:
            self.clock.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: ModelClock) -> None:
        super().__init__(_AdvancingSelector(clock))
        self._model_clock = clock

    def time(self) -> float:
        return self._model_clock.now
