"""Child processes with log files, readiness polling, and orderly teardown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from epp.parentdeath import with_parent_death
from epp.readyfile import read_ready_file

T = TypeVar("T")


class RestartBackoff:
    """Delays between restarts of a process that keeps dying: `initial`, doubling up to `maximum`;
    back to `initial` once a restart has stayed up for `reset_after` seconds."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        reset_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self._clock = clock
        self._next = initial
        self._started: float | None = None
        self.restarts = 0

    def next_delay(self) -> float:
        """The wait before the next start of a process that just died."""
        if self._started is not None and self._clock() - self._started >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def started(self) -> None:
        self.restarts += 1
        self._started = self._clock()


class ProcessFailed(RuntimeError):
    """A child exited or never became ready; the message carries the tail of its log."""


class EnvoyDidNotSeeEpp(ProcessFailed):
    """A restarted EPP runs and is ready, but Envoy did not find it healthy in time: new requests
    get the gateway's 503 until it does."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def rotate_logs(directory: Path) -> None:
    """A run's logs start empty: each `*.log` an earlier run left in `directory` becomes `*.log.1`
    (replacing the one before), so a reader sees this run's lines alone and the last run's are
    kept once. Within a run a process's log is appended to: a restarted EPP's follows the lines
    of the one that died."""
    for log in directory.glob("*.log"):
        log.replace(log.with_name(log.name + ".1"))


def epp_command(*args: str) -> list[str]:
    """Run our own CLI with the interpreter we are running under (works without PATH setup)."""
    return [sys.executable, "-m", "epp.cli", *args]


class ManagedProcess:
    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = env
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._open_log() as log_file:
            # `epp run` killed with -9 takes Envoy, the EPP and the simulators with it.
            self.process = await asyncio.create_subprocess_exec(
                *with_parent_death(self.argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env={**os.environ, **(self._env or {})},
                start_new_session=True,
            )

    def _open_log(self) -> BinaryIO:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return self.log_path.open("ab")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        if self.returncode is not None:
            raise ProcessFailed(
                f"{self.name} exited with {self.returncode}; log {self.log_path}:\n{self.log_tail()}"
            )

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; then SIGKILL to what is left of its session."""
        await self._signal_and_wait(signal.SIGTERM, timeout)

    async def kill(self) -> None:
        await self._signal_and_wait(signal.SIGKILL, 5.0)

    async def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None:
            return
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        self._end_leftovers()

    def _end_leftovers(self) -> None:
        """Kill what is left of the process's session (its own group: start_new_session). A
        process that died without stopping its children (`epp serve --workers` killed with -9)
        leaves them running, holding its ports and serving on its shared ext_proc port."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    what: str,
    timeout: float,
    watched: Sequence[ManagedProcess] = (),
    interval: float = 0.05,
) -> T:
    """Poll `probe` until it returns a value; fail early if a watched process dies."""
    deadline = time.monotonic() + timeout
    while True:
        for process in watched:
            process.check_alive()
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in watched)
            raise ProcessFailed(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
        await asyncio.sleep(interval)


def ready_file_probe(path: Path) -> Callable[[], Awaitable[Any]]:
    """A probe returning the parsed ready file once its writer has published it."""

    async def probe() -> Any:
        return read_ready_file(path)

    return probe
