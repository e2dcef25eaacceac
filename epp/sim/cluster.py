"""Start several simulated servers inside the current event loop (tests, ``epp sim``, ``epp run``).

    async with SimCluster(make_configs(4, time_scale=0.1)) as cluster:
        for endpoint in cluster.endpoints: ...

Servers of one cluster share a ``KVRegistry``, so P/D decode legs pull KV from prefill servers of
the same cluster without HTTP; servers elsewhere are reached over HTTP.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from epp.readyfile import write_ready_file
from epp.sim.config import EndpointConfig
from epp.sim.pd import KVRegistry
from epp.sim.server import EndpointInfo, SimServer


def make_configs(
    count: int, *, name_prefix: str = "sim", port: int = 0, **common: Any
) -> list[EndpointConfig]:
    """``count`` configs named ``<prefix>-0``...; ports ``port``, ``port+1``... (0: each picks a free
    one). ``common`` holds any other ``EndpointConfig`` field, identical for all."""
    return [
        EndpointConfig(name=f"{name_prefix}-{i}", port=port + i if port else 0, **common)
        for i in range(count)
    ]


class SimCluster:
    """Owns a group of ``SimServer`` objects; starts them all or none."""

    def __init__(self, configs: Sequence[EndpointConfig]) -> None:
        self.registry = KVRegistry()
        self.servers = [SimServer(config, self.registry) for config in configs]

    @property
    def endpoints(self) -> list[EndpointInfo]:
        return [server.info for server in self.servers]

    async def start(self) -> None:
        started: list[SimServer] = []
        try:
            for server in self.servers:
                await server.start()
                started.append(server)
        except BaseException:
            for server in reversed(started):
                await server.stop()
            raise

    async def stop(self) -> None:
        for server in reversed(self.servers):
            await server.stop()

    async def __aenter__(self) -> SimCluster:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def ready_document(self) -> dict[str, Any]:
        return {
            "endpoints": [
                {
                    key: value
                    for key, value in dataclasses.asdict(info).items()
                    if key in ("name", "host", "port", "model", "adapters")
                }
                for info in self.endpoints
            ]
        }

    def write_ready_file(self, path: str | os.PathLike[str]) -> None:
        """Publish ``{"endpoints": [{"name", "host", "port", "model", "adapters"}, ...]}`` atomically
        for pollers."""
        write_ready_file(Path(path), self.ready_document())
