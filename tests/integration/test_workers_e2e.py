"""`epp serve --workers 2` behind real Envoy: two worker processes on one port (SO_REUSEPORT),
joined by the supervisor's private redis-server; requests succeed, and when one worker is killed
with SIGKILL the supervisor restarts it while requests keep succeeding."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from epp.replicas.local_redis import redis_server_path
from tests.integration.conftest import StackFactory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        redis_server_path() is None, reason="needs redis-server (apt-get install redis-server)"
    ),
]

BODY = {"model": "sim-model", "prompt": "hello " * 100, "max_tokens": 2}


async def gauge(client: httpx.AsyncClient, port: int, name: str) -> float:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_two_workers_share_the_port_and_survive_a_killed_worker(make_stack: StackFactory) -> None:
    async with make_stack("workers", sims=2, epp_args=["--workers=2"], epp_connections=4) as stack:
        workers = stack.epp_ports["workers"]  # type: ignore[index]
        assert len(workers) == 2
        assert workers[0]["grpc_port"] == workers[1]["grpc_port"] == stack.epp_ports["grpc_port"]
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
            for _ in range(20):
                assert (await client.post("/v1/completions", json=BODY)).status_code == 200
            for worker in workers:  # both joined the private Redis
                assert await gauge(client, worker["metrics_port"], "epp_replica_sync_connected") == 1
            os.kill(workers[1]["pid"], signal.SIGKILL)
            statuses: list[int] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                statuses.append((await client.post("/v1/completions", json=BODY)).status_code)
                await asyncio.sleep(0.02)
            # at most the requests whose connection the kill cut fail; all in the last 3 s succeed
            assert statuses.count(200) >= len(statuses) - 4
            assert all(s == 200 for s in statuses[-50:])
        assert stack.epp is not None and stack.epp.running  # the supervisor lives on
        assert "restarting it" in stack.epp.log_tail(50)
