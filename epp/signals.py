"""Graceful shutdown for every long-running subcommand, and children that end with their parent."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from collections.abc import Callable

# prctl(2)'s option: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


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


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for a child that must not outlive this process, even killed with SIGKILL
    (which runs no cleanup here): on Linux the child gets SIGTERM when its parent dies, and stops
    as it does on Ctrl-C (its own children with it). None elsewhere (no such signal).

    Caveats: the signal comes when the *thread* that forked the child ends, so spawn from a thread
    that lives as long as the process (asyncio spawns on its loop's thread). `preexec_fn` runs
    Python in the forked child, which can deadlock on a lock another thread held at the fork: this
    one only calls a prctl bound before the fork (no import, no logging, no allocation through
    locks of ours). If the parent died before the prctl, the child exits at once.

    A prctl that fails (a seccomp profile that denies it: EPERM) is said on the child's stderr and
    the child runs anyway: only the SIGKILL case is lost (a parent that stops normally still stops
    its children), and refusing would leave `epp run` and `--workers` unable to start at all where
    a sandbox forbids the call. `sig`: the signal the child gets (SIGTERM)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    signum = int(sig)

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            error = os.strerror(ctypes.get_errno())
            os.write(
                2,
                f"epp: prctl(PR_SET_PDEATHSIG, {signum}) failed ({error}): this process will not "
                "stop if its parent is killed with SIGKILL\n".encode(),
            )
        if os.getppid() != parent:
            os._exit(1)

    return preexec
