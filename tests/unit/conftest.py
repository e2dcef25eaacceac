"""A real redis-server on a free 127.0.0.1 port per test (skipped, saying what to install, when
Debian's redis-server is missing; `make install` installs it as root)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from epp.replicas.local_redis import LocalRedis, free_port, redis_server_path


@pytest_asyncio.fixture
async def redis_server() -> AsyncIterator[LocalRedis]:
    if redis_server_path() is None:
        pytest.skip("needs redis-server: sudo apt-get install -y redis-server (or make install as root)")
    async with LocalRedis(port=free_port()) as server:
        yield server
