"""Stopping background tasks: every long-running part cancels its task and waits for it, so
nothing it started outlives its `stop()`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task given (None: no task running) and wait until each has ended; their
    cancellation stops here, an error they end with is raised."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
