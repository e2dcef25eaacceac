"""The prefill leg's retry rules against a real local HTTP server answering a scripted sequence."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from multidict import CIMultiDict

from epp.sidecar.errors import ProxyError
from epp.sidecar.hostport import HostPort
from epp.sidecar.prefill import PrefillClient, RetryPolicy
from epp.sidecar.upstream import StageTls, open_session
from epp.stack.processes import free_port


class ScriptedPrefiller:
    """Answers with the next status of `script` (the last one repeats) and counts requests."""

    def __init__(self) -> None:
        self.script: list[int] = [200]
        self.requests = 0
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        status = self.script[min(self.requests, len(self.script) - 1)]
        self.requests += 1
        return web.json_response({"attempt": self.requests}, status=status)


@pytest.fixture
async def prefiller() -> AsyncIterator[ScriptedPrefiller]:
    scripted = ScriptedPrefiller()
    app = web.Application()
    app.router.add_post("/v1/completions", scripted.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    scripted.port = runner.addresses[0][1]
    yield scripted
    await runner.cleanup()


async def send(prefiller: ScriptedPrefiller, max_retries: int) -> int:
    async with open_session(StageTls(), connect_timeout=5) as session:
        client = PrefillClient(
            session, StageTls(), RetryPolicy(timeout=10, max_retries=max_retries, backoff=0.001)
        )
        reply = await client.send(
            HostPort("127.0.0.1", prefiller.port), "/v1/completions", CIMultiDict(), b"{}"
        )
        return reply.status


async def test_retries_on_503_until_success(prefiller: ScriptedPrefiller) -> None:
    prefiller.script = [503, 502, 200]
    assert await send(prefiller, max_retries=2) == 200
    assert prefiller.requests == 3


async def test_last_retryable_status_is_returned_after_the_last_retry(prefiller: ScriptedPrefiller) -> None:
    prefiller.script = [504]
    assert await send(prefiller, max_retries=1) == 504
    assert prefiller.requests == 2


@pytest.mark.parametrize("status", [400, 404, 429, 500])
async def test_other_failures_are_final(prefiller: ScriptedPrefiller, status: int) -> None:
    prefiller.script = [status, 200]
    assert await send(prefiller, max_retries=3) == status
    assert prefiller.requests == 1


async def test_unreachable_prefiller_is_502_after_the_retries() -> None:
    dead = HostPort("127.0.0.1", free_port())
    async with open_session(StageTls(), connect_timeout=5) as session:
        client = PrefillClient(session, StageTls(), RetryPolicy(timeout=10, max_retries=2, backoff=0.001))
        with pytest.raises(ProxyError) as raised:
            await client.send(dead, "/v1/completions", CIMultiDict(), b"{}")
    assert raised.value.status == 502
    assert str(dead) in raised.value.message


def test_backoff_doubles() -> None:
    policy = RetryPolicy(backoff=0.2)
    assert [policy.delay(n) for n in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.8])
