"""llm-d's inflight-load-producer through the real data path: Envoy, `epp serve` with llm-d's
optimized-baseline guide config (token-load-scorer + inflight-load-producer, verbatim) and
simulators. The EPP's `llm_d_epp_inflight_requests` / `_inflight_tokens` gauges rise while a
request is in flight, lose the prompt tokens at a stream's first chunk, and return to zero when
the response ends or the client disconnects mid-stream; with llm-d's P/D guide config the prefill
pick is freed whole at the first chunk."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from epp.stack.envoy import BODY_MODES, EnvoyOptions
from epp.stack.stack import DECODE, PREFILL
from tests.integration.conftest import FAST_SIM, StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

CONFIG = (
    Path(__file__).parents[1]
    / "data/upstream/configs/llmd-0a3b0c9__guides__optimized-baseline__router__optimized-baseline.values.yaml"
)
UPSTREAM = Path(__file__).parents[1] / "data/upstream"
PD_CONFIG = (
    UPSTREAM
    / "configs_nonstandard/llmd-83bb7c1__guides__pd-disaggregation__router__pd-disaggregation.values.yaml"
)
MODEL = "sim-model"
PROMPT = "Tell me a story about the sea. " * 20  # ~155 prompt tokens by llm-d's 4-bytes estimate
SLOW = [*FAST_SIM, "--time-scale=20"]  # ~22 ms a decode step: a 400-token answer takes seconds
SERIES = re.compile(
    r'^(llm_d_epp_inflight_(?:requests|tokens))\{[^}]*producer_name="inflight-load-producer"[^}]*\} (\S+)$'
)


async def inflight(client: httpx.AsyncClient, metrics_url: str, endpoint: str = "") -> tuple[int, int]:
    """The EPP's in-flight requests and tokens over every endpoint, or on `endpoint` (a series
    exists while > 0)."""
    totals = {"llm_d_epp_inflight_requests": 0.0, "llm_d_epp_inflight_tokens": 0.0}
    for line in (await client.get(metrics_url + "/metrics")).text.splitlines():
        found = SERIES.match(line)
        if found and (not endpoint or f'endpoint_name="{endpoint}"' in line):
            totals[found.group(1)] += float(found.group(2))
    return int(totals["llm_d_epp_inflight_requests"]), int(totals["llm_d_epp_inflight_tokens"])


async def wait_for(
    client: httpx.AsyncClient, metrics_url: str, want: Callable[[tuple[int, int]], bool], endpoint: str = ""
) -> tuple[int, int]:
    seen = (-1, -1)
    for _ in range(500):
        seen = await inflight(client, metrics_url, endpoint)
        if want(seen):
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"in-flight (requests, tokens) stayed {seen}")


def idle(load: tuple[int, int]) -> bool:
    return load == (0, 0)


@pytest.mark.parametrize("body_mode", BODY_MODES)
async def test_inflight_load_rises_and_returns_to_zero(make_stack: StackFactory, body_mode: str) -> None:
    template = CONFIG.read_text()
    envoy = EnvoyOptions(listen_port=0, admin_port=0, body_mode=body_mode)
    async with (
        make_stack("inflight", sims=2, sim_args=SLOW, epp_config_template=template, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client,
    ):
        metrics = stack.view_url
        assert await inflight(client, metrics) == (0, 0)

        # A JSON answer: the request and its whole prompt stay charged until the body ends.
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 60, "ignore_eos": True}
        answer = asyncio.create_task(client.post("/v1/completions", json=body))
        _, tokens = await wait_for(client, metrics, lambda load: load[0] == 1)
        assert 140 <= tokens <= 170  # the prompt (block-rounded by the prefix producer's view)
        assert (await answer).status_code == 200
        await wait_for(client, metrics, idle)

        # A stream: the prompt is freed at the first chunk, the request when the client leaves.
        body = {**body, "max_tokens": 400, "stream": True}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
            await wait_for(client, metrics, lambda load: load == (1, 0))
        # closed mid-stream: Envoy resets the upstream and ends the ext_proc stream
        await wait_for(client, metrics, idle)

        # A model server's error answer frees everything too.
        too_long = {"model": MODEL, "prompt": "word " * 4000, "max_tokens": 10}
        assert (await client.post("/v1/completions", json=too_long)).status_code == 400
        await wait_for(client, metrics, idle)


def pd_config() -> str:
    """The guide's config under the apiVersion the router reads (the guide wrote `llm-d.ai/v1`)."""
    text = PD_CONFIG.read_text()
    assert text.startswith("apiVersion: llm-d.ai/v1\n")
    return text.replace("apiVersion: llm-d.ai/v1\n", "apiVersion: llm-d.ai/v1alpha1\n", 1)


async def test_pd_frees_the_prefill_pick_at_the_first_chunk(make_stack: StackFactory) -> None:
    """llm-d's P/D guide config: the prefill and decode picks are each charged; at the first
    streamed chunk the prefill pick is freed whole and the decode pick keeps its request."""
    async with (
        make_stack(
            "inflight-pd",
            prefill_sims=1,
            decode_sims=1,
            sim_args=SLOW,
            epp_config_template=pd_config(),
        ) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client,
    ):
        metrics = stack.view_url
        prefill = next(s.name for s in stack.sims if s.role == PREFILL)
        decode = next(s.name for s in stack.sims if s.role == DECODE)
        # A JSON answer: both picks hold the request and its prompt until the body ends.
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 60, "ignore_eos": True}
        answer = asyncio.create_task(client.post("/v1/completions", json=body))
        _, tokens = await wait_for(client, metrics, lambda load: load[0] == 1, prefill)
        assert tokens > 0 and (await inflight(client, metrics, decode))[0] == 1
        assert (await answer).status_code == 200
        await wait_for(client, metrics, idle)

        body = {**body, "prompt": "Another story. " * 40, "max_tokens": 400, "stream": True}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
            await wait_for(client, metrics, lambda load: load == (1, 0), decode)
            assert await inflight(client, metrics, prefill) == (0, 0)
        await wait_for(client, metrics, idle)
