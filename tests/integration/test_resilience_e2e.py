"""Failures through real Envoy: the EPP's fallback endpoints and Envoy's retries, a hung model
server, the EPP killed under streaming load. Every wait polls and is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx
import pytest
from aiohttp import web

from epp.stack.envoy import EnvoyOptions
from epp.stack.processes import free_port, wait_until
from epp.stack.stack import SimEndpoint, Stack
from tests.integration.conftest import FAST_SIM, StackFactory, failure_report

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

MODEL = "sim-model"
TWO_ENDPOINTS = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
"""


def epp_args(*extra: str) -> list[str]:
    """The EPP's overload guards are off: these tests are about failing model servers and the
    gateway's retries, and expect every request served. A stall of the EPP's host for a second (a
    loaded CI machine) makes a request in flight wait past --max-queue-wait, and the guard answers
    it 429 by design (tests/integration/test_queue_wait_e2e.py); so would two event-loop lags in a
    row past --max-event-loop-lag."""
    return [
        "--served-header=x-epp-destination",
        "--refresh-metrics-interval=50ms",
        "--max-queue-wait=0",
        "--max-event-loop-lag=0",
        *extra,
    ]


async def completions(stack: Stack, count: int) -> AsyncIterator[httpx.Response]:
    """Up to `count` completions through the gateway, one at a time, each a 200."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        for i in range(count):
            body = {"model": MODEL, "prompt": f"p{i}", "max_tokens": 1}
            response = await client.post("/v1/completions", json=body)
            assert response.status_code == 200, f"request {i}: {await failure_report(stack, response)}"
            yield response


async def retries(stack: Stack) -> int:
    return (await stack.envoy_stats("cluster.pool.upstream_rq_retry_success"))[
        "cluster.pool.upstream_rq_retry_success"
    ]


@pytest.mark.parametrize("kind", ["503", "refuses"])
async def test_a_failing_primary_is_served_by_the_epps_fallback(make_stack: StackFactory, kind: str) -> None:
    """The EPP lists two endpoints; when the first answers 503 or refuses the connection, Envoy
    retries on the second, and the EPP learns which one served."""
    async with (
        fake_server("broken", 200, 503, refuses=kind == "refuses") as broken,
        make_stack(f"fallback-{kind}", sims=1, epp_args=epp_args(f"--config-text={TWO_ENDPOINTS}")) as stack,
    ):
        stack.write_endpoints_file([broken, *stack.sims])
        sim = stack.sims[0]

        async def envoy_has_it() -> bool | None:  # the EPP rewrites Envoy's EDS file, Envoy reloads
            return True if broken.hostport in await stack.envoy_pool_hosts() else None

        await wait_until(envoy_has_it, "Envoy's pool to list the broken endpoint", 10)
        rescued = 0
        async with aclosing(completions(stack, 200)) as responses:
            async for response in responses:
                assert response.headers["x-inference-pod"] == sim.name
                assert "x-gateway-destination-endpoint-served" not in response.headers  # the EPP's only
                listed = response.headers["x-epp-destination"].split(",")
                if listed == [broken.hostport, sim.hostport]:
                    rescued += 1
                    if rescued == 3:
                        break
                await asyncio.sleep(0.02)  # the EPP re-reads the endpoints file, the scraper sees /metrics
        assert rescued == 3, "the broken endpoint was never the EPP's first choice"
        assert await retries(stack) >= 3


@asynccontextmanager
async def fake_server(
    name: str,
    metrics_status: int,
    inference_status: int,
    model: str | None = None,
    refuses: bool = False,
    running_adapter: str = "",
) -> AsyncIterator[SimEndpoint]:
    """A pool member whose /metrics answers `metrics_status` (its scrape fails unless 200) and
    whose /v1/completions answers `inference_status`, naming itself as the simulator does; with
    `refuses`, its inference port is closed (connections refused, /metrics elsewhere); with
    `running_adapter`, its metrics say it runs that LoRA adapter."""
    page = "vllm:num_requests_waiting 0\n"
    if running_adapter:
        labels = f'max_lora="4",running_lora_adapters="{running_adapter}",waiting_lora_adapters=""'
        page += f"vllm:lora_requests_info{{{labels}}} 1\n"

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(status=metrics_status, text=page)

    async def completions(_: web.Request) -> web.Response:
        body = {"choices": [{"text": name}]} if inference_status == 200 else {"error": "unavailable"}
        return web.json_response(body, status=inference_status, headers={"x-inference-pod": name})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    try:
        if refuses:
            yield SimEndpoint(name, "127.0.0.1", free_port(), metrics_port=port, model=model)
        else:
            yield SimEndpoint(name, "127.0.0.1", port, model=model)
    finally:
        await runner.cleanup()


async def test_retries_past_the_epps_list_reach_only_endpoints_it_would_route_to(
    make_stack: StackFactory,
) -> None:
    """The EPP lists one endpoint; when it answers 503, Envoy's retry has used up the list and
    falls back to its own choice: only among the endpoints the EPP would route the request to.
    Two pool members answer requests but must never get one: `down` (its scrapes fail, so the EPP
    has it out of rotation) and `other` (a server of another model). And the only server of a
    third model answering 503 leaves its requests nowhere else to go: the client gets the 503."""
    async with (
        fake_server("unavailable", 200, 503) as unavailable,
        fake_server("down", 500, 200) as down,
        fake_server("other", 200, 200, model="other-model") as other,
        fake_server("lonely", 200, 503, model="lonely-model") as lonely,
        make_stack("scoped", sims=2, epp_args=epp_args()) as stack,
    ):
        stack.write_endpoints_file([*stack.sims, unavailable, down, other, lonely])
        listed = {unavailable.hostport, down.hostport, other.hostport, lonely.hostport}

        async def envoy_has_them() -> bool | None:  # EDS rewritten, Envoy reloaded, `down` out
            clusters = await stack.envoy_clusters_text()
            failed = f"pool::{down.hostport}::health_flags::/failed_eds_health" in clusters
            return True if failed and listed <= await stack.envoy_pool_hosts() else None

        await wait_until(envoy_has_them, "Envoy's pool to hold the fakes, `down` unhealthy", 10)
        sims = {sim.name for sim in stack.sims}
        rescued = 0
        async with aclosing(completions(stack, 600)) as responses:
            async for response in responses:
                assert response.headers["x-inference-pod"] in sims, await failure_report(stack, response)
                if response.headers["x-epp-destination"] == unavailable.hostport:
                    rescued += 1
                    if rescued == 40:
                        break
        assert rescued == 40, "the unavailable endpoint was seldom the EPP's choice"
        assert await retries(stack) >= rescued
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
            body = {"model": "lonely-model", "prompt": "hi", "max_tokens": 1}
            response = await client.post("/v1/completions", json=body)
        assert response.status_code == 503, response.text
        assert response.headers["x-epp-destination"] == lonely.hostport
        assert response.headers.get("x-inference-pod") in (None, "lonely"), response.headers


async def test_a_lora_adapter_only_its_primary_runs_is_not_retried_on_its_group_mates(
    make_stack: StackFactory,
) -> None:
    """`adapter` is the only server running `lora-1` (its metrics say so; its model list names the
    base model, as the simulators' do) and answers 503: the retry past the EPP's list must not
    reach a simulator of the same base model, which has no such adapter loaded; the client gets
    the 503."""
    async with (
        fake_server("adapter", 200, 503, running_adapter="lora-1") as adapter,
        make_stack("adapter", sims=2, epp_args=epp_args()) as stack,
    ):
        stack.write_endpoints_file([*stack.sims, adapter])

        async def envoy_has_it() -> bool | None:
            return True if adapter.hostport in await stack.envoy_pool_hosts() else None

        await wait_until(envoy_has_it, "Envoy's pool to list the adapter's server", 10)
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
            body = {"model": "lora-1", "prompt": "hi", "max_tokens": 1}

            async def routed_to_the_adapter() -> httpx.Response | None:  # once its metrics are read
                response = await client.post("/v1/completions", json=body)
                return response if response.headers.get("x-epp-destination") == adapter.hostport else None

            response = await wait_until(routed_to_the_adapter, "a request routed to the adapter's server", 10)
        assert response.status_code == 503, (response.status_code, response.headers)
        assert response.headers.get("x-inference-pod") in (None, "adapter"), response.headers


async def test_a_hung_server_gets_no_new_request_after_the_first_timeout(make_stack: StackFactory) -> None:
    """SIGSTOP one of two simulators. The streaming requests routed there get no first byte within
    the bound and are retried on the other; after that the EPP routes nothing new to it, until it
    runs again (SIGCONT) and comes back into rotation. The overdue check is off, so requests do
    reach the stopped server (with it, none does once its scrape is 200 ms late: the next test)."""
    envoy = EnvoyOptions(listen_port=0, admin_port=0, first_byte_timeout="1s")
    args = epp_args("--metrics-overdue-intervals=0")
    async with make_stack("hung", sims=2, envoy=envoy, epp_args=args) as stack:
        victim, other = stack.sims
        process = stack.sim_process(victim.name)
        os.kill(process.pid, signal.SIGSTOP)
        try:
            async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:

                async def one(i: int) -> str:
                    body = {"model": MODEL, "prompt": f"question {i}", "max_tokens": 2, "stream": True}
                    response = await client.post("/v1/completions", json=body)
                    assert response.status_code == 200, response.text
                    assert response.headers["x-inference-pod"] == other.name
                    return response.headers["x-epp-destination"]

                # Equal scores are broken at random: some of 16 land on the stopped server (all
                # but with probability 2^-16), before its first /metrics timeout.
                routed = await asyncio.gather(*(one(i) for i in range(16)))
                assert victim.hostport in routed
                assert await retries(stack) >= routed.count(victim.hostport)
                after = [await one(100 + i) for i in range(10)]
                assert set(after) == {other.hostport}
                os.kill(process.pid, signal.SIGCONT)
                # Back in rotation with its first good scrape: ties are broken at random again.
                for i in range(200):
                    body = {"model": MODEL, "prompt": f"again {i}", "max_tokens": 1}
                    response = await client.post("/v1/completions", json=body)
                    assert response.status_code == 200, response.text
                    if response.headers["x-inference-pod"] == victim.name:
                        break
                    await asyncio.sleep(0.02)
                assert response.headers["x-inference-pod"] == victim.name
        finally:
            os.kill(process.pid, signal.SIGCONT)


@pytest.mark.parametrize("overdue_intervals", [4, 0])
async def test_a_hung_server_gets_no_new_request_once_its_scrape_is_overdue(
    make_stack: StackFactory, overdue_intervals: int
) -> None:
    """SIGSTOP one of two simulators. Its last metrics (no queue, a light KV cache) look idle, so
    GIE's default profile (queue, KV-cache and prefix scorers) would prefer it until its scrape
    times out (1 s). Once its /metrics GET has gone unanswered for the overdue intervals (200 ms),
    the next requests all go to the other, while it is still in rotation by health (the
    timeout has not fired). With the check off (0) requests sent at the same point land on it."""
    envoy = EnvoyOptions(listen_port=0, admin_port=0, first_byte_timeout="1s")
    args = epp_args(f"--metrics-overdue-intervals={overdue_intervals}")
    async with make_stack("overdue", sims=2, envoy=envoy, epp_args=args) as stack:
        victim, other = stack.sims
        process = stack.sim_process(victim.name)
        async with httpx.AsyncClient(timeout=30) as client:

            async def victims_view(want: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
                endpoints = (await client.get(f"{stack.view_url}/api/endpoints")).json()["endpoints"]
                state: dict[str, Any] = next(e for e in endpoints if e["address"] == victim.hostport)
                return state if want(state) else None

            def stale(state: dict[str, Any]) -> bool:
                """Overdue (check on), or its metrics as old as an overdue server's (check off)."""
                if overdue_intervals:
                    return bool(state["health"] == "overdue")
                age = state["metrics_age_seconds"]
                return age is not None and age >= 0.25 and state["health"] != "unreachable"

            async def one(i: int) -> str:
                body = {"model": MODEL, "prompt": f"question {i}", "max_tokens": 2, "stream": True}
                response = await client.post(f"{stack.gateway_url}/v1/completions", json=body)
                assert response.status_code == 200, response.text
                return response.headers["x-epp-destination"]

            await wait_until(
                lambda: victims_view(lambda s: s["metrics_age_seconds"] is not None), "scraped", 10
            )
            os.kill(process.pid, signal.SIGSTOP)
            try:
                seen = await wait_until(lambda: victims_view(stale), "the victim's metrics stale", 10)
                routed = await asyncio.gather(*(one(i) for i in range(16)))
                hung = routed.count(victim.hostport)
                print(f"overdue intervals {overdue_intervals}: {hung} of 16 routed to the stopped server")
                if overdue_intervals:
                    assert not seen["ready"], seen
                    assert hung == 0 and set(routed) == {other.hostport}, routed
                    # Routed while the timeout had not yet taken it out: the overdue check did it.
                    after = await victims_view(lambda s: True)
                    assert after is not None and after["health"] == "overdue", after
                else:
                    assert seen["health"] == "ready" and seen["ready"], seen
                    assert hung > 0, routed  # all 16 elsewhere with probability about 2^-16
            finally:
                os.kill(process.pid, signal.SIGCONT)


async def test_killing_the_epp_leaves_streams_in_flight_whole(make_stack: StackFactory) -> None:
    """kill -9 the EPP while generations stream: every one of them still ends with [DONE];
    a new request gets the fail-closed 503 until the EPP is back, then 200 again."""
    async with make_stack("epp-kill", sims=2, sim_args=[*FAST_SIM, "--time-scale=20"]) as stack:
        flowing = 0
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:

            async def generation(i: int) -> list[str]:
                nonlocal flowing
                body = {"model": MODEL, "prompt": f"story {i}", "max_tokens": 20, "stream": True}
                body["ignore_eos"] = True
                lines = []
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            lines.append(line)
                            if len(lines) == 1:
                                flowing += 1
                return lines

            streams = [asyncio.create_task(generation(i)) for i in range(8)]
            for _ in range(500):
                if flowing == len(streams):
                    break
                await asyncio.sleep(0.01)
            assert flowing == len(streams)
            assert stack.epp is not None
            await stack.epp.kill()
            for lines in await asyncio.gather(*streams):
                assert len(lines) == 21 and lines[-1] == "data: [DONE]"
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
            assert (await client.post("/v1/completions", json=body)).status_code == 503
            await stack.restart_epp()
            assert (await client.post("/v1/completions", json=body)).status_code == 200
