"""The EPP's rate-limit quota through real Envoy (`epp run --quota-from-epp`): under a flood that
overloads the EPP (stopped for a moment, so the requests meanwhile queue before it and its
standing-queue controller sheds them), the EPP assigns Envoy's rate_limit_quota filter a token
bucket at the rate it admitted, and Envoy itself answers part of the flood 429 (response code
details `rate_limited_by_quota`) without an ext_proc stream; once the flood ends the limit is
lifted and requests are served again."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import dataclass, field

import httpx
import pytest

from epp.stack.envoy import LIMIT_MESSAGES, EnvoyOptions
from epp.stack.stack import Stack
from tests.integration.conftest import StackFactory, stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

BODY = {"model": "sim-model", "prompt": "hi", "max_tokens": 1}
PACE = 0.002  # seconds between two requests of the flood
IN_FLIGHT = 512  # the flood's requests in flight at most
MAX_FLOOD = 10_000  # requests: the flood's bound
HELD = 100  # requests that open their ext_proc stream while the EPP is stopped
QUOTA_429S = 20  # Envoy's refusals the flood waits for
EPP_STREAMS = "cluster.epp.upstream_rq_total"
RATE = r"^llm_d_epp_rate_limit_quota_requests_per_second (\S+)$"


@dataclass
class Flood:
    """Open loop: a request every PACE seconds whatever the answers (at most IN_FLIGHT at once),
    until `stop` or MAX_FLOOD sent."""

    client: httpx.AsyncClient
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    by_quota: list[httpx.Response] = field(default_factory=list)
    failed: list[httpx.Response] = field(default_factory=list)

    async def run(self) -> None:
        slots = asyncio.Semaphore(IN_FLIGHT)
        requests = []
        while not self.stop.is_set() and self.sent < MAX_FLOOD:
            await slots.acquire()
            self.sent += 1
            requests.append(asyncio.ensure_future(self._one(slots)))
            await asyncio.sleep(PACE)
        await asyncio.gather(*requests)

    async def _one(self, slots: asyncio.Semaphore) -> None:
        try:
            response = await self.client.post("/v1/completions", json=BODY)
        finally:
            slots.release()
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            self.failed.append(response)
        if response.headers.get("x-gateway-limit") == "quota":
            self.by_quota.append(response)


async def test_envoy_refuses_the_excess_of_an_overloaded_epp_by_its_quota_and_recovers(
    make_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    epp_args = [
        *stack_config(tmp_path_factory.mktemp("args")).epp_args,
        "--max-event-loop-lag=0",  # a stopped process lags too: the controller is what sheds here
        "--queue-wait-target=5ms",
        "--queue-wait-interval=10ms",
        "--rate-limit-quota",
    ]
    envoy = EnvoyOptions(listen_port=0, admin_port=0, quota_from_epp=True)
    limits = httpx.Limits(max_connections=IN_FLIGHT)
    async with (
        make_stack("quota", sims=1, epp_args=epp_args, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30, limits=limits) as client,
    ):
        assert stack.epp is not None and stack.epp.process is not None
        first = await client.post("/v1/completions", json=BODY)  # opens Envoy's quota stream
        assert first.status_code == 200, first.text
        await poll_metric(client, stack, r"^llm_d_epp_rate_limit_quota_streams 1\.0$")

        flood = Flood(client)
        flooding = asyncio.ensure_future(flood.run())
        try:
            streams = await envoy_stat(client, stack, EPP_STREAMS)
            os.kill(stack.epp.process.pid, signal.SIGSTOP)  # the requests meanwhile queue before it
            try:
                for _ in range(3000):
                    if await envoy_stat(client, stack, EPP_STREAMS) >= streams + HELD:
                        break
                    await asyncio.sleep(0.01)
            finally:
                os.kill(stack.epp.process.pid, signal.SIGCONT)
            assigned = await poll_metric(client, stack, RATE, lambda rate: float(rate) > 0)
            await poll(
                lambda: len(flood.by_quota) >= QUOTA_429S or flooding.done(),
                "Envoy never refused by quota",
            )
        finally:
            flood.stop.set()
            await flooding

        assert float(assigned) > 0
        assert len(flood.by_quota) >= QUOTA_429S, flood.statuses
        assert set(flood.statuses) <= {200, 429}, (flood.statuses, flood.failed[0].text)  # never a 5xx
        refused = flood.by_quota[0]
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == {
            "message": LIMIT_MESSAGES["quota"],
            "type": "RateLimitQuota - rate_limited_by_quota",
            "code": 429,
        }
        # Refused before ext_proc, on the way in and out: the EPP saw none of them.
        streams = await envoy_stat(client, stack, "http.gateway.ext_proc.streams_started")
        assert streams <= flood.sent + 1 - len(flood.by_quota)

        # The flood over, the EPP lifts the limit: served again.
        after = await poll_request(client, lambda r: r.status_code == 200)
        assert after.status_code == 200, after.text
        await poll_metric(client, stack, RATE, lambda rate: float(rate) == 0)
        models = await client.get("/v1/models")  # never behind the quota
        assert models.status_code == 200, models.text


async def poll(done: object, failure: str) -> None:
    """Until `done()` (bounded: 3,000 turns of 10 ms)."""
    assert callable(done)
    for _ in range(3000):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(failure)


async def poll_metric(client: httpx.AsyncClient, stack: Stack, pattern: str, accept: object = None) -> str:
    """The EPP's /metrics until `pattern` matches (and its first group passes `accept`)."""
    text = ""
    for _ in range(300):
        text = (await client.get(f"{stack.view_url}/metrics")).text
        found = re.search(pattern, text, re.M)
        if found is not None:
            value = found.group(1) if found.groups() else found.group(0)
            if accept is None or (callable(accept) and accept(value)):
                return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{pattern} never matched: {[x for x in text.splitlines() if 'quota' in x]}")


async def poll_request(client: httpx.AsyncClient, accept: object) -> httpx.Response:
    response = None
    for _ in range(300):
        response = await client.post("/v1/completions", json=BODY)
        if callable(accept) and accept(response):
            return response
        await asyncio.sleep(0.02)
    assert response is not None
    return response


async def envoy_stat(client: httpx.AsyncClient, stack: Stack, name: str) -> int:
    stats = (await client.get(f"{stack.admin_url}/stats", params={"filter": f"^{re.escape(name)}$"})).text
    return int(stats.split(": ")[1])
