"""A real redis-server on a free 127.0.0.1 port per test (skipped, saying what to install, when
Debian's redis-server is missing; `make install` installs it as root); a root-logger handler for
the logging flags' tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from epp.replicas.local_redis import LocalRedis, free_port, redis_server_path


@pytest_asyncio.fixture
async def redis_server() -> AsyncIterator[LocalRedis]:
    if redis_server_path() is None:
        pytest.skip("needs redis-server: sudo apt-get install -y redis-server (or make install as root)")
    async with LocalRedis(port=free_port()) as server:
        yield server


@pytest.fixture
def root_handler() -> Iterator[logging.Handler]:
    """A handler on the root logger (as basicConfig installs), removed afterwards; the root's
    level and its handlers' formatters and filters are put back."""
    root = logging.getLogger()
    level = root.level
    handler = logging.StreamHandler()
    root.addHandler(handler)
    saved = {h: (h.formatter, list(h.filters)) for h in root.handlers}
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)
    for known, (formatter, filters) in saved.items():
        known.setFormatter(formatter)
        known.filters[:] = filters
