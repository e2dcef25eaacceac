"""The event loop the long-running commands run on: uvloop where it is installed, asyncio's own
otherwise, or the one `--event-loop` names.

uvloop (libuv's loop) runs the same coroutines with less CPU per wake-up and per transport read:
the EPP's gRPC streams, its metrics scrapes and the simulator's HTTP all sit on the loop
(docs/benchmarks.md, "Event loop"). `--event-loop asyncio` keeps asyncio's pure-Python loop for
debugging (its debug mode, tracebacks through the selector)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

CHOICES = ("auto", "uvloop", "asyncio")
DEFAULT = "auto"
T = TypeVar("T")
HELP = (
    "the asyncio event loop implementation: auto (default) uvloop if installed, else asyncio's own; "
    "uvloop (an error if not installed); asyncio (asyncio's pure-Python loop, for debugging)"
)


class UnavailableLoop(ValueError):
    """The loop `--event-loop` names cannot be made here (a ValueError, as other bad flags are);
    its own class, so a caller turning it into an exit status leaves its program's errors alone."""


def add_argument(parser: argparse.ArgumentParser, help: str = HELP) -> None:
    parser.add_argument("--event-loop", choices=CHOICES, default=DEFAULT, help=help)


def loop_factory(name: str = DEFAULT) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of the kind `name` names (one of CHOICES)."""
    if name not in CHOICES:
        raise UnavailableLoop(f"--event-loop must be one of {', '.join(CHOICES)}, not {name!r}")
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise UnavailableLoop(
                "--event-loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], name: str = DEFAULT) -> T:
    """`asyncio.run(main)` on a loop of the kind `name` names."""
    try:
        factory = loop_factory(name)
    except UnavailableLoop:
        main.close()  # never awaited: no "coroutine was never awaited" warning on a bad flag
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
