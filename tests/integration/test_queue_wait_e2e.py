"""Shedding on the time a request waited before the EPP saw it, through real Envoy: with the EPP
stopped (SIGSTOP: its backlog builds in Envoy and the kernel, where neither its event-loop lag nor
its stream count sees it), the requests that arrive meanwhile reach it late, and Envoy's
`request.time` attribute lets it answer them 429 with Retry-After at once, counted by reason."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from epp.stack.envoy import BODY_MODES, EnvoyOptions
from tests.integration.conftest import StackFactory, stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "sim-model"
BOUND_MS = 300
HELD = 8  # requests that arrive while the EPP is stopped
BODY = {"model": MODEL, "prompt": "hi", "max_tokens": 1}


@pytest.mark.parametrize("body_mode", BODY_MODES)
async def test_requests_that_waited_for_a_stopped_epp_get_the_guards_429(
    make_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory, body_mode: str
) -> None:
    epp_args = [
        *stack_config(tmp_path_factory.mktemp("args")).epp_args,
        f"--max-queue-wait={BOUND_MS}ms",
        "--max-event-loop-lag=0",  # a stopped process lags too: this test is about the queue wait
    ]
    envoy = EnvoyOptions(listen_port=0, admin_port=0, body_mode=body_mode)
    async with (
        make_stack("queue-wait", sims=1, epp_args=epp_args, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        assert stack.epp is not None and stack.epp.process is not None
        timely = await client.post("/v1/completions", json=BODY)
        assert timely.status_code == 200, timely.text
        pid = stack.epp.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            held = [asyncio.ensure_future(client.post("/v1/completions", json=BODY)) for _ in range(HELD)]
            stopped = time.monotonic()
            await poll_stat(client, stack.admin_url, "cluster.epp.upstream_rq_total", HELD + 1)
            await asyncio.sleep(max(0.0, 2 * BOUND_MS / 1000 - (time.monotonic() - stopped)))
        finally:
            os.kill(pid, signal.SIGCONT)
        for response in await asyncio.gather(*held):
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "1"
            message = response.json()["error"]["message"]
            assert message.startswith(
                "inference error: ResourceExhausted - the endpoint picker is overloaded: "
            )
            assert message.endswith(f"over its limit of {BOUND_MS} ms (--max-queue-wait); retry later")
        after = await client.post("/v1/completions", json=BODY)
        assert after.status_code == 200, after.text
        metrics = (await client.get(f"{stack.view_url}/metrics")).text
        assert f'llm_d_epp_overload_refused_total{{reason="queue_wait"}} {float(HELD)}' in metrics


async def poll_stat(client: httpx.AsyncClient, admin: str, name: str, at_least: int) -> None:
    """Until Envoy's counter `name` reaches `at_least`: every held request has opened its
    ext_proc stream."""
    for _ in range(500):
        stats = (await client.get(f"{admin}/stats", params={"filter": f"^{name}$"})).text
        if int(stats.split(": ")[1]) >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {at_least}: {stats}")
