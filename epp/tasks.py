"""Stopping background tasks: every long-running part cancels its task and waits for it, so
nothing it started outlives its `stop()`."""

from __future__ import annotations

import asyncio
from typing import Any


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
