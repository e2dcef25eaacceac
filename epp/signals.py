"""Graceful shutdown for every long-running subcommand."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so a service can stop cleanly instead of dying mid-request.
    Call it from inside the running event loop."""
    stop = asyncio.Event()
    on_stop_signal(stop.set)
    return stop


def on_stop_signal(callback: Callable[[], None]) -> None:
    """Call `callback` at each SIGINT or SIGTERM from now on, instead of what was called before."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback)
