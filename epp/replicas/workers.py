"""`epp serve --workers N`: N worker processes on one host, each a full `epp serve` and an
active-active replica of the others, sharing the ext_proc and health ports through SO_REUSEPORT
(grpc sets it on Linux), so one machine's cores serve the pool.

The supervisor picks the shared ports (when 0 was asked), gives worker i the metrics port
`--metrics-port + i` (with 0, a free run of N ports, picked once: a restarted worker, or the whole
EPP restarted with `--metrics-port` set to the first, binds the ports it had), joins the workers
through `--replica-sync` (or, without one, a private redis-server on a Unix socket in a temporary
directory), writes the ready file once every worker is serving, restarts a worker that dies, and
passes SIGTERM/SIGINT on to all of them.

The kernel spreads *connections* over the workers; Envoy multiplexes ext_proc streams over few
HTTP/2 connections, so its EPP cluster must open several (docs/operations.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epp.parentdeath import with_parent_death
from epp.readyfile import read_ready_file, write_ready_file
from epp.replicas.local_redis import LocalRedis, redis_server_path

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 60.0
_SET_BY_SUPERVISOR = (
    "--workers",
    "--grpc-port",
    "--grpc-health-port",
    "--metrics-port",
    "--ready-file",
    "--replica-id",
    "--replica-sync",
)
_SWITCHES_SET_BY_SUPERVISOR = ("--reuse-port",)


def strip_flags(argv: Sequence[str], flags: Sequence[str], switches: Sequence[str] = ()) -> list[str]:
    """`argv` without `flags` in either form (`--flag value`, `--flag=value`) and without the
    valueless `switches`."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in switches:
            continue
        if name in flags:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def free_port(host: str, exclude: Collection[int] = (), attempts: int = 100) -> int:
    """A port free on `host` now, other than `exclude` (ports already chosen, not yet bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(attempts):
        with socket.socket(family) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in exclude:
            return port
    raise OSError(f"no free port on {host} outside {sorted(exclude)} in {attempts} attempts")


def free_port_run(host: str, count: int, attempts: int = 100, exclude: Collection[int] = ()) -> int:
    """The first of `count` consecutive ports free on `host` now, none of them in `exclude`
    (ports already chosen but not yet bound, which a bind test would find free): from a free
    port, the run starts past the last excluded port it would include."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    excluded = set(exclude)
    for _ in range(attempts):
        first = free_port(host)
        while taken := [port for port in range(first, first + count) if port in excluded]:
            first = taken[-1] + 1
        if first + count - 1 > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    s = held.enter_context(socket.socket(family))
                    s.bind((host, port))
            except OSError:
                continue
        return first
    raise OSError(f"no {count} consecutive free ports on {host} in {attempts} attempts")


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    workers: int
    host: str
    grpc_port: int
    health_port: int
    metrics_port: int
    ready_file: Path | None
    sync_url: str | None
    replica_id: str
    shutdown_grace: float
    log_level: str = "INFO"  # `epp --log-level`, which each worker is started with


class Supervisor:
    def __init__(self, plan: WorkerPlan, serve_argv: Sequence[str]) -> None:
        self.plan = plan
        self.base_argv = strip_flags(serve_argv, _SET_BY_SUPERVISOR, _SWITCHES_SET_BY_SUPERVISOR)
        probe_host = (
            "127.0.0.1" if plan.host in ("0.0.0.0", "") else "::1" if plan.host == "::" else plan.host
        )
        self.grpc_port = plan.grpc_port or free_port(probe_host)
        self.health_port = plan.health_port or free_port(probe_host, exclude=(self.grpc_port,))
        # Worker i's, kept across its restarts: the ready file and the live views name them.
        self.metrics_port = plan.metrics_port or free_port_run(
            probe_host, plan.workers, exclude=(self.grpc_port, self.health_port)
        )
        self.processes: list[asyncio.subprocess.Process | None] = [None] * plan.workers
        self.restarts = 0
        self._dir = tempfile.TemporaryDirectory(prefix="epp-workers-")
        self._redis: LocalRedis | None = None
        self.sync_url = plan.sync_url

    def worker_argv(self, index: int) -> list[str]:
        plan = self.plan
        # One writer of Envoy's EDS file: each worker scrapes on its own, and files written from
        # views a scrape apart would flip the hosts' health to and fro.
        base = self.base_argv if index == 0 else strip_flags(self.base_argv, ("--envoy-eds-file",))
        argv = [
            sys.executable,
            "-m",
            "epp.cli",
            f"--log-level={plan.log_level}",
            "serve",
            *base,
            f"--grpc-port={self.grpc_port}",
            f"--grpc-health-port={self.health_port}",
            f"--metrics-port={self.metrics_port + index}",
            f"--ready-file={self._ready_path(index)}",
            f"--replica-id={plan.replica_id}-w{index}",
            "--reuse-port",
        ]
        if self.sync_url:
            argv.append(f"--replica-sync={self.sync_url}")
        return argv

    def _ready_path(self, index: int) -> Path:
        return Path(self._dir.name) / f"worker-{index}.ready.json"

    async def _start(self, index: int) -> None:
        self._ready_path(index).unlink(missing_ok=True)
        self.processes[index] = await asyncio.create_subprocess_exec(
            *with_parent_death(self.worker_argv(index))
        )

    async def run(self, stop: asyncio.Event) -> int:
        try:
            if self.sync_url is None:
                if redis_server_path() is None:
                    log.warning(
                        "--workers without --replica-sync and no redis-server installed: the workers "
                        "route independently (each learns prefixes only from its own share)"
                    )
                else:
                    self._redis = LocalRedis(unix_socket=Path(self._dir.name) / "redis.sock")
                    await self._redis.start()
                    self.sync_url = self._redis.url
            for index in range(self.plan.workers):
                await self._start(index)
            ready = await self._wait_ready(stop)
            if ready is None:
                return 1 if not stop.is_set() else 0
            self._write_ready_file(ready)
            log.info(
                "%d workers serving ext_proc on port %d (SO_REUSEPORT), replica sync %s",
                self.plan.workers,
                self.grpc_port,
                self.sync_url or "off",
            )
            await self._watch(stop, ready)
            return 0
        finally:
            await self._stop_all()
            if self._redis is not None:
                await self._redis.stop()
            self._dir.cleanup()

    async def _wait_ready(self, stop: asyncio.Event) -> dict[str, Any] | None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not stop.is_set():
            files = [read_ready_file(self._ready_path(i)) for i in range(self.plan.workers)]
            first = files[0]
            if first is not None and all(files):
                return {
                    "grpc_port": self.grpc_port,
                    "health_port": self.health_port,
                    "metrics_port": first["metrics_port"],
                    "workers": files,
                }
            for index, process in enumerate(self.processes):
                if process is not None and process.returncode is not None:
                    log.error("worker %d exited with %s while starting", index, process.returncode)
                    return None
            if time.monotonic() > deadline:
                log.error("workers not ready within %.0f s", STARTUP_TIMEOUT)
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
        return None

    def _write_ready_file(self, ready: dict[str, Any]) -> None:
        if self.plan.ready_file is not None:
            write_ready_file(self.plan.ready_file, ready)

    async def _watch(self, stop: asyncio.Event, ready: dict[str, Any]) -> None:
        """Restart a worker that dies (the others serve meanwhile), until stopped; once it is
        ready, the ready file names its process instead of the dead one's."""
        restarted: set[int] = set()
        while not stop.is_set():
            for index, process in enumerate(self.processes):
                if process is not None and process.returncode is not None:
                    log.warning("worker %d exited with %s; restarting it", index, process.returncode)
                    self.restarts += 1
                    await self._start(index)
                    restarted.add(index)
            for index in sorted(restarted):
                worker = read_ready_file(self._ready_path(index))
                if worker is not None:
                    ready["workers"][index] = worker
                    restarted.discard(index)
                    self._write_ready_file(ready)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _stop_all(self) -> None:
        running = [p for p in self.processes if p is not None and p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), self.plan.shutdown_grace + 5)
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in running))


def serve_argv(argv: Sequence[str] | None = None) -> list[str]:
    """This process's `epp serve` arguments: after `epp`'s own `--log-level` (given to the workers
    apart, as `WorkerPlan.log_level`) and the `serve` subcommand, which may be implied."""
    args = list(sys.argv[1:] if argv is None else argv)
    while args and args[0].split("=", 1)[0] == "--log-level":
        del args[: 1 if "=" in args[0] else 2]
    return args[1:] if args[:1] == ["serve"] else args
