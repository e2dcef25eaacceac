"""The API server double on a free 127.0.0.1 port, a kubeconfig pointing the real client at it,
and a poll helper (tests wait on observable state, never on fixed sleeps)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from epp.discovery.k8s.reflector import WatchTiming
from epp.stack.processes import wait_until
from tests.k8s_double import ApiServerDouble

# Small pages so paging is exercised; tiny backoff so retries do not slow the suite.
FAST = WatchTiming(watch_timeout=60, backoff_initial=0.01, backoff_max=0.05, page_size=2)


@pytest.fixture
async def api() -> AsyncIterator[ApiServerDouble]:
    double = ApiServerDouble()
    await double.start()
    yield double
    await double.stop()


@pytest.fixture
def kubeconfig(api: ApiServerDouble, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    async def probe() -> bool | None:
        return True if predicate() else None

    await wait_until(probe, what, timeout, interval=0.01)
