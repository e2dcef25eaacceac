"""`EPP_TEST_EVENT_LOOP=uvloop pytest ...` runs every asyncio test on uvloop (the loop `epp serve`
runs on by default) instead of asyncio's own loop (pytest-asyncio's default)."""

from __future__ import annotations

import os

if os.environ.get("EPP_TEST_EVENT_LOOP") == "uvloop":
    import uvloop

    def pytest_asyncio_loop_factories(config: object, item: object) -> dict[str, object]:
        return {"uvloop": uvloop.new_event_loop}
