"""Stopping background tasks: every long-running part cancels its task and waits for it, so
nothing it started outlives its `stop()`."""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL = 0.05  # seconds between cancellations of a task that has not ended


def cancel_until_done(task: asyncio.Task[Any]) -> None:
    """Cancels the task now and again every `RECANCEL` seconds until it has ended. Once is not
    always enough: `asyncio.wait_for` on Python 3.11 (redis-py sends every command under it)
    returns its operand's result, dropping the cancellation, when the cancellation arrives as
    the operand completes (CPython gh-86296, fixed in 3.12); a loop task that lost its one
    cancellation ran on past its stop(). Only for tasks with no cleanup of their own that
    awaits: a later cancellation would cut that short (`cancel_and_wait` cancels once)."""
    if task.done():
        return
    loop = asyncio.get_running_loop()
    pending: asyncio.TimerHandle | None = None

    def cancel() -> None:
        nonlocal pending
        task.cancel()
        pending = loop.call_later(RECANCEL, cancel)

    def ended(_: asyncio.Task[Any]) -> None:
        if pending is not None:
            pending.cancel()

    cancel()
    task.add_done_callback(ended)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task given (None: no task running) and wait until each has ended; their
    cancellation stops here, the first error they end with is raised once all have ended. The
    caller's own cancellation while it waits is not swallowed: it goes on, and the caller stops."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    current = asyncio.current_task()
    # A caller may already be cancelling (it caught a cancellation and cleans up): only a
    # cancellation that arrives while it waits here is its own to pass on.
    cancelling = current.cancelling() if current is not None else 0
    error: Exception | None = None
    for task in running:
        try:
            await task
        except asyncio.CancelledError:
            if current is not None and current.cancelling() > cancelling:
                raise
        except Exception as exc:
            if error is None:
                error = exc
    if error is not None:
        raise error
