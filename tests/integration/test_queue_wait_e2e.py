"""Shedding on the time a request waited before the EPP saw it, through real Envoy: with the EPP
stopped (SIGSTOP: its backlog builds in Envoy and the kernel, where neither its event-loop lag nor
its stream count sees it), the requests that arrive meanwhile reach it late, and Envoy's
`request.time` attribute lets it answer them 429 with Retry-After at once, counted by reason. Below
that bound the standing-queue controller serves one such burst and sheds the next late ones (every
wait above its target for a whole interval) until a request arrives on time."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from epp.stack.envoy import BODY_MODES, EnvoyOptions
from epp.stack.stack import Stack
from tests.integration.conftest import StackFactory, failure_report, stack_config

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
        assert timely.status_code == 200, await failure_report(stack, timely)
        held = await while_stopped(client, stack, HELD + 1, 2 * BOUND_MS / 1000)
        for response in held:
            assert response.status_code == 429, await failure_report(stack, *held)
            assert response.headers["retry-after"] == "1"
            message = response.json()["error"]["message"]
            assert message.startswith(
                "inference error: ResourceExhausted - the endpoint picker is overloaded: "
            )
            assert message.endswith(f"over its limit of {BOUND_MS} ms (--max-queue-wait); retry later")
        after = await client.post("/v1/completions", json=BODY)
        assert after.status_code == 200, await failure_report(stack, after)
        metrics = (await client.get(f"{stack.view_url}/metrics")).text
        assert f'llm_d_epp_overload_refused_total{{reason="queue_wait"}} {float(HELD)}' in metrics


async def test_a_second_late_burst_is_shed_as_a_standing_queue_and_an_on_time_request_ends_it(
    make_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    epp_args = [
        *stack_config(tmp_path_factory.mktemp("args")).epp_args,
        "--max-queue-wait=0",  # the bound off: this test is about the controller below it
        "--max-event-loop-lag=0",
        "--queue-wait-target=100ms",
        "--queue-wait-interval=1s",
    ]
    async with (
        make_stack("standing-queue", sims=1, epp_args=epp_args) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        assert stack.epp is not None and stack.epp.process is not None
        timely = await client.post("/v1/completions", json=BODY)
        assert timely.status_code == 200, await failure_report(stack, timely)
        streams = 1
        bursts = []
        for _ in range(2):  # each burst waits 1.5 s for the stopped EPP: the second after an interval
            streams += HELD
            bursts.append(await while_stopped(client, stack, streams, 1.5))
        statuses = [[response.status_code for response in burst] for burst in bursts]
        assert statuses == [[200] * HELD, [429] * HELD], await failure_report(stack, *bursts[0], *bursts[1])
        held = bursts[1]
        assert held[0].headers["retry-after"] == "1"
        assert held[0].json()["error"]["message"] == (
            "inference error: ResourceExhausted - the endpoint picker is overloaded: requests have waited "
            "over 100 ms to reach it for 1000 ms (--queue-wait-target, --queue-wait-interval); retry later"
        )
        # While shedding the EPP reads one request per target (the others are refused unread): the
        # first read one target after the last, on time, is served and ends the shedding.
        await asyncio.sleep(0.1)
        after = await client.post("/v1/completions", json=BODY)
        assert after.status_code == 200, await failure_report(stack, after)
        metrics = (await client.get(f"{stack.view_url}/metrics")).text
        assert f'llm_d_epp_overload_refused_total{{reason="standing_queue"}} {float(HELD)}' in metrics


async def while_stopped(
    client: httpx.AsyncClient, stack: Stack, streams: int, seconds: float
) -> list[httpx.Response]:
    """HELD requests sent while the EPP is stopped (SIGSTOP) for `seconds`, once all of them have
    opened their ext_proc stream (`streams` in all so far); their responses."""
    assert stack.epp is not None and stack.epp.process is not None
    pid = stack.epp.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        held = [asyncio.ensure_future(client.post("/v1/completions", json=BODY)) for _ in range(HELD)]
        stopped = time.monotonic()
        await poll_stat(client, stack.admin_url, "cluster.epp.upstream_rq_total", streams)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - stopped)))
    finally:
        os.kill(pid, signal.SIGCONT)
    return list(await asyncio.gather(*held))


async def poll_stat(client: httpx.AsyncClient, admin: str, name: str, at_least: int) -> None:
    """Until Envoy's counter `name` reaches `at_least`: every held request has opened its
    ext_proc stream."""
    for _ in range(500):
        stats = (await client.get(f"{admin}/stats", params={"filter": f"^{name}$"})).text
        if int(stats.split(": ")[1]) >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {at_least}: {stats}")
