"""`epp serve --workers 2` behind real Envoy: two worker processes on one port (SO_REUSEPORT),
joined by the supervisor's private redis-server; requests succeed, and when one worker is killed
with SIGKILL the supervisor restarts it while requests keep succeeding."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import httpx
import pytest

from epp.readyfile import read_ready_file
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
            # the restarted worker serves its metrics (and live view) where the ready file says
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if await gauge(client, workers[1]["metrics_port"], "epp_replica_sync_connected") == 1:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(
                    f"the restarted worker is not on metrics port {workers[1]['metrics_port']}"
                )
            # the ready file names the restarted worker's process, not the killed one's
            for _ in range(300):
                now = read_ready_file(stack.run_dir / "epp.ready.json")["workers"]
                if now[1]["pid"] != workers[1]["pid"]:
                    break
                await asyncio.sleep(0.05)
            assert now[0] == workers[0] and now[1]["metrics_port"] == workers[1]["metrics_port"]
            os.kill(now[1]["pid"], 0)  # alive: the restarted worker
            assert now[1]["pid"] != workers[1]["pid"], "the ready file still names the killed worker"
        assert stack.epp is not None and stack.epp.running  # the supervisor lives on
        assert "restarting it" in stack.epp.log_tail(50)


async def test_a_restarted_epp_keeps_its_workers_ports_and_routes_once_back(make_stack: StackFactory) -> None:
    """`epp run` restarts an EPP that exited: its workers bind the ports they had (worker 1 got
    worker 0's port + 1), and the first requests after "the EPP is back" are routed (they got
    Envoy's 503 until its next health check of the EPP's hosts)."""
    async with make_stack("workers-restart", sims=2, epp_args=["--workers=2"], epp_connections=4) as stack:
        before = [w["metrics_port"] for w in stack.epp_ports["workers"]]  # type: ignore[index]
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
            assert (await client.post("/v1/completions", json=BODY)).status_code == 200
            assert stack.epp is not None
            os.kill(stack.epp.pid, signal.SIGTERM)
            for _ in range(200):
                if not stack.epp.running:
                    break
                await asyncio.sleep(0.05)
            await stack.restart_epp()
            assert await stack.envoy_sees_the_epp()
            after = [w["metrics_port"] for w in stack.epp_ports["workers"]]  # type: ignore[index]
            assert after == before
            statuses = [(await client.post("/v1/completions", json=BODY)).status_code for _ in range(20)]
            assert statuses == [200] * 20
