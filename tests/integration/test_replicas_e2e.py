"""Active-active EPP replicas through real Envoy: two `epp serve` processes joined by a real
redis-server, both hosts of Envoy's EPP cluster. They route a shared-prefix workload as well as one
EPP does (judged by the simulators' own cached tokens), and when one is killed with SIGKILL under
load, requests keep succeeding on the other."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from epp.replicas.local_redis import redis_server_path
from epp.stack.stack import Stack
from tests.integration.conftest import StackFactory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        redis_server_path() is None, reason="needs redis-server (apt-get install redis-server)"
    ),
]

GROUPS = 6
QUESTIONS = 8


def body(group: int, question: int) -> dict[str, object]:
    words = " ".join(f"rule{group}-{i} applies to every answer in this conversation" for i in range(60))
    return {
        "model": "sim-model",
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": f"You are assistant number {group}. {words}."},
            {"role": "user", "content": f"Question {question}: what is rule {question}?"},
        ],
    }


async def cached_share(stack: Stack) -> float:
    prompt = cached = 0
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        for question in range(QUESTIONS):
            for group in range(GROUPS):
                response = await client.post("/v1/chat/completions", json=body(group, question))
                assert response.status_code == 200, response.text
                usage = response.json()["usage"]
                prompt += usage["prompt_tokens"]
                cached += usage["prompt_tokens_details"]["cached_tokens"]
    return cached / prompt


async def metric(stack: Stack, replica: int, name: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (
            await client.get(f"http://127.0.0.1:{stack.replica_ports[replica]['metrics_port']}/metrics")
        ).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_two_replicas_route_shared_prefixes_as_one(make_stack: StackFactory) -> None:
    async with make_stack("one", sims=4) as stack:
        one = await cached_share(stack)
    async with make_stack("two", sims=4, epp_replicas=2) as stack:
        two = await cached_share(stack)
        for replica in (0, 1):  # each served a share, and learned the other's routes
            assert await metric(stack, replica, "inference_objective_request_total") > 0
            assert await metric(stack, replica, 'epp_replica_sync_routes_total{direction="received"}') > 0
    print(f"cached share: one EPP {one:.3f}, two synced replicas {two:.3f}")
    assert two >= one - 0.05


async def test_killing_one_replica_under_load_keeps_requests_succeeding(make_stack: StackFactory) -> None:
    async with make_stack("kill", sims=3, epp_replicas=2) as stack:
        outcomes: list[tuple[float, float, int]] = []  # (sent, done, status; 0 = transport error)
        killed_at: list[float] = []
        stop_at = time.monotonic() + 30  # a bound; the test stops far sooner

        async def client_loop(worker: int) -> None:
            async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
                question = 0
                while time.monotonic() < stop_at and not (killed_at and time.monotonic() > killed_at[0] + 3):
                    sent = time.monotonic()
                    try:
                        response = await client.post("/v1/chat/completions", json=body(worker, question))
                        outcomes.append((sent, time.monotonic(), response.status_code))
                    except httpx.HTTPError:
                        outcomes.append((sent, time.monotonic(), 0))
                    question += 1

        clients = [asyncio.create_task(client_loop(i)) for i in range(8)]
        deadline = time.monotonic() + 20
        while sum(1 for _, _, status in outcomes if status == 200) < 40:  # under load on both replicas
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert await metric(stack, 1, "inference_objective_request_total") > 0
        os.kill(stack.epps[1].pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        await asyncio.gather(*clients)
        kill = killed_at[0]
        before = [s for _, done, s in outcomes if done < kill]
        in_flight = [s for sent, done, s in outcomes if sent < kill <= done]
        after = [s for sent, _, s in outcomes if sent >= kill]
        settled = [s for sent, _, s in outcomes if sent >= kill + 1.0]
        print(
            f"done before the kill: {len(before)}; in flight: {len(in_flight)}, "
            f"{sum(s != 200 for s in in_flight)} failed; sent after: {len(after)}, "
            f"{sum(s != 200 for s in after)} failed"
        )
        stats = await stack.envoy_stats("cluster.epp.")
        assert stats["cluster.epp.health_check.failure"] > 0  # Envoy's check found the dead replica
        assert all(s == 200 for s in before)
        assert len(settled) >= 20 and all(s == 200 for s in settled)  # the survivor serves everything
        assert stack.epps[0].running
