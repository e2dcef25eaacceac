"""A private `redis-server` process: for `epp serve --workers N` without --replica-sync (the
workers of one host share it over a Unix socket) and for tests (a free 127.0.0.1 port)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from pathlib import Path

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from epp.parentdeath import with_parent_death

REDIS_SERVER = "redis-server"


def redis_server_path() -> str | None:
    return shutil.which(REDIS_SERVER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalRedis:
    """`async with LocalRedis(port=…) as r:` (or `unix_socket=…`) starts redis-server without
    persistence, waits until it answers PING (at most `startup_timeout`), and kills it on exit."""

    def __init__(
        self, port: int | None = None, unix_socket: Path | None = None, startup_timeout: float = 10.0
    ) -> None:
        if (port is None) == (unix_socket is None):
            raise ValueError("LocalRedis needs exactly one of port or unix_socket")
        self.port = port
        self.unix_socket = unix_socket
        self.startup_timeout = startup_timeout
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = redis_server_path()
        if binary is None:
            raise OSError("redis-server is not installed (Debian: apt-get install redis-server)")
        listen = (
            ["--port", "0", "--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
            if self.unix_socket is not None
            else ["--port", str(self.port), "--bind", "127.0.0.1"]
        )
        argv = [binary, *listen, "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        # A session of its own: a terminal's Ctrl-C (or a `kill` of the process group) reaches the
        # workers, which drain for --drain-timeout, and not the server they sync through, which
        # quit at once and left them routing on local state for the whole drain. It stops with
        # the supervisor (`stop`), or with its death (the parent-death signal).
        self.process = await asyncio.create_subprocess_exec(
            *with_parent_death(argv),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        client = aioredis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self.process.returncode is not None:
                    raise OSError(f"redis-server exited with status {self.process.returncode}")
                try:
                    if await client.ping():
                        return
                except (RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    await self.stop()
                    raise OSError(f"redis-server did not answer within {self.startup_timeout} s")
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.kill()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(process.wait(), 10)

    async def __aenter__(self) -> LocalRedis:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
