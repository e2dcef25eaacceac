"""Runs an ``Engine`` in (scaled) real time on the asyncio event loop.

Engine time is seconds of simulated GPU time; the driver maps it to the loop clock through
``time_scale`` (0.1 = ten times faster than the modelled GPU), sleeps each step's duration, then
tells the listeners of the requests that produced tokens. Metrics therefore always report modelled
GPU latencies, whatever the time scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from epp.kvevents import KVEvent
from epp.sim.engine import Engine, Rejection, Request, StepOutcome
from epp.tasks import cancel_and_wait

Listener = Callable[[], None]
EventSink = Callable[[list[KVEvent], float], Awaitable[None]]


class EngineDriver:
    """Owns the step loop of one engine. ``submit``/``abort`` are synchronous and never block."""

    def __init__(
        self, engine: Engine, time_scale: float = 1.0, kv_event_sink: EventSink | None = None
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.engine = engine
        self.time_scale = time_scale
        self._kv_event_sink = kv_event_sink
        self._listeners: dict[Request, Listener] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._origin = 0.0

    def now(self) -> float:
        """Current engine time (seconds of simulated GPU time since start)."""
        return (asyncio.get_running_loop().time() - self._origin) / self.time_scale

    def start(self) -> None:
        self._origin = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def submit(self, request: Request, listener: Listener) -> Rejection | None:
        """Queue ``request``; ``listener`` is called after every step that changes it."""
        rejection = self.engine.add(request)
        if rejection is None:
            self._listeners[request] = listener
            self._wake.set()
        return rejection

    def abort(self, request: Request) -> None:
        """Free ``request`` now (its client is gone); no-op when already finished."""
        self._listeners.pop(request, None)
        self.engine.abort(request)
        self._wake.set()

    def recompute_locally(self, request: Request) -> None:
        """A decode leg's KV pull failed under the `recompute` policy (Engine.recompute_locally)."""
        self.engine.recompute_locally(request)
        self._wake.set()

    def wake(self) -> None:
        """Something outside the engine (a released lease) changed what can run."""
        self._wake.set()

    async def _loop(self) -> None:
        engine = self.engine
        while True:
            # Cleared before stepping: a submit during any await below (the KV-event publication,
            # the step's sleep) leaves it set, so the idle wait returns at once and nothing is missed.
            self._wake.clear()
            outcome = engine.step(self.now())
            await self._publish_kv_events()
            if not outcome.batch_size:
                await self._idle()
                continue
            await asyncio.sleep(outcome.duration * self.time_scale)
            self._notify(outcome)

    async def _idle(self) -> None:
        """Until woken or the engine's next timer. Not `asyncio.wait_for`: on Python 3.11 it drops
        a cancellation (`stop()`) that arrives as the wake-up does (CPython gh-86296), and this
        loop would then run on, with `stop()` waiting for it for ever."""
        timer = self.engine.next_timer()
        timeout = None if timer is None else max(0.0, (timer - self.now()) * self.time_scale)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _notify(self, outcome: StepOutcome) -> None:
        listeners = self._listeners
        for request in outcome.emitted:
            listener = listeners.get(request)
            if listener is not None:
                listener()
        for request in outcome.finished:
            listener = listeners.pop(request, None)
            if listener is not None and request.output_done == 0:
                listener()

    async def _publish_kv_events(self) -> None:
        if self._kv_event_sink is None:
            return
        events = self.engine.drain_kv_events()
        if events:
            await self._kv_event_sink(events, time.time())
