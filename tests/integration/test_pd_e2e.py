"""Prefill/decode disaggregation end to end (issue 4 section 4): real Envoy, the EPP running llm-d's
sim-pd-epp-config, 2 prefill simulators, and 2 decode simulators each behind a real `epp sidecar`.
Where a request went is read from the simulators' own counters (GET /internal/stats)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from epp.stack.processes import wait_until
from epp.stack.stack import PREFILL, SimEndpoint, Stack
from tests.integration.conftest import stack_config
from tests.integration.helpers import read_sse
from tests.integration.test_sidecar import LocalServer

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "sim-model"
PD_CONFIG = Path(__file__).parents[2] / "epp" / "config" / "samples" / "sim-pd-epp-config.yaml"
COUNTERS = ("requests", "prefill_only", "remote_decode", "cached_tokens")


def pd_stack(run_dir: Path) -> Stack:
    config = stack_config(run_dir, prefill_sims=2, decode_sims=2)
    config.epp_args.append(f"--config-file={PD_CONFIG}")
    return Stack(config)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with pd_stack(tmp_path_factory.mktemp("pd")) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def prefillers(stack: Stack) -> list[SimEndpoint]:
    return [s for s in stack.sims if s.role == PREFILL]


def long_prompt(words: int = 120) -> str:
    """A prompt nobody has seen (a fresh tag first): ~150 estimated tokens, far above 16."""
    return f"{uuid.uuid4().hex} " + "disaggregation pays when prefill and decode interfere " * (words // 6)


async def counters(http: aiohttp.ClientSession, sims: list[SimEndpoint]) -> dict[str, dict[str, int]]:
    """Each simulator's counters by endpoint name (a decode simulator's through its sidecar)."""
    stats = {}
    for sim in sims:
        async with http.get(f"http://{sim.hostport}/internal/stats") as response:
            document = await response.json()
        stats[sim.name] = {key: document[key] for key in COUNTERS}
    return stats


def changes(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], key: str) -> dict[str, int]:
    """Endpoints whose counter `key` moved, and by how much."""
    moved = {name: after[name][key] - before[name][key] for name in before}
    return {name: delta for name, delta in moved.items() if delta}


async def complete(
    http: aiohttp.ClientSession,
    url: str,
    prompt: str,
    stream: bool = False,
    prefiller: str | None = None,
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    """(response, usage) of a completion, sent with `x-prefiller-host-port: <prefiller>` if given;
    streamed ones ask for the usage chunk."""
    headers = {"x-prefiller-host-port": prefiller} if prefiller else {}
    body: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "ignore_eos": True}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{url}/v1/completions", json=body, headers=headers) as response:
        if response.status != 200:
            return response, {"error": await response.text()}
        if stream:
            frames = await read_sse(response)
            assert frames[-1] == "[DONE]"
            return response, frames[-2]["usage"]
        return response, (await response.json())["usage"]


def name_of(stack: Stack, response: aiohttp.ClientResponse) -> str:
    """The endpoint the EPP chose (Envoy returns the EPP's `--served-header`)."""
    destination = response.headers["x-epp-destination"]
    return next(s.name for s in stack.sims if s.hostport == destination)


async def test_a_long_uncached_prompt_is_prefilled_remotely_then_decoded(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    before = await counters(http, stack.sims)
    response, usage = await complete(http, stack.gateway_url, long_prompt())
    assert response.status == 200, usage
    after = await counters(http, stack.sims)
    decode = name_of(stack, response)
    assert decode.startswith("decode-")
    prefilled = changes(before, after, "prefill_only")
    assert len(prefilled) == 1 and next(iter(prefilled)).startswith("prefill-")
    assert changes(before, after, "remote_decode") == {decode: 1}
    assert changes(before, after, "requests") == {decode: 1, **prefilled}
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0  # the cold prefiller's figure


async def test_short_and_already_cached_prompts_stay_on_the_decode_pod(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    before = await counters(http, stack.sims)
    short, _ = await complete(http, stack.gateway_url, "Say hi")
    assert short.status == 200
    after_short = await counters(http, stack.sims)
    assert changes(before, after_short, "requests") == {name_of(stack, short): 1}

    prompt = long_prompt()
    first, _ = await complete(http, stack.gateway_url, prompt)
    mid = await counters(http, stack.sims)
    assert changes(after_short, mid, "remote_decode") == {name_of(stack, first): 1}
    again, usage = await complete(http, stack.gateway_url, prompt)
    after = await counters(http, stack.sims)
    assert name_of(stack, again) == name_of(stack, first), "prefix affinity: back to the pod holding it"
    assert changes(mid, after, "requests") == {name_of(stack, again): 1}, "no prefill leg anywhere"
    assert changes(mid, after, "remote_decode") == {}
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0  # the decode pod's own cache


async def epp_idle(http: aiohttp.ClientSession, stack: Stack) -> None:
    """Wait until the EPP counts no request in flight and its latest scrapes show every queue
    empty: a response reaches the client slightly before its ext_proc stream ends, and a scrape
    taken while the first request queued would tie the queue scorer against the prefix score."""
    base = f"http://127.0.0.1:{stack.epp_ports['metrics_port']}"

    async def idle() -> bool | None:
        async with http.get(f"{base}/metrics") as response:
            page = await response.text()
        running = re.findall(r"^inference_objective_running_requests\{[^}]*\} (\S+)$", page, re.M)
        async with http.get(f"{base}/api/endpoints") as response:
            endpoints = (await response.json())["endpoints"]
        quiet = all(e["waiting"] == 0 and e["running"] == 0 for e in endpoints)
        return True if quiet and all(float(value) == 0 for value in running) else None

    await wait_until(idle, "the EPP to release the first request and see quiet servers", 10)


async def test_the_client_sees_the_prefillers_cached_tokens(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A longer prompt sharing a prefilled prefix is disaggregated again (its new part is uncached on
    the decode pod) to the prefiller that holds the prefix: the client's cached_tokens is that
    prefiller's figure, not the decoder's (which received the whole prompt's KV)."""
    prefix = long_prompt()
    first, _ = await complete(http, stack.gateway_url, prefix)
    await epp_idle(http, stack)  # else the first request's load may still weigh on its decode pod
    before = await counters(http, stack.sims)
    response, usage = await complete(http, stack.gateway_url, prefix + long_prompt(), stream=True)
    after = await counters(http, stack.sims)
    assert response.status == 200 and name_of(stack, response) == name_of(stack, first)
    ((prefiller, legs),) = changes(before, after, "prefill_only").items()
    assert legs == 1
    cached = changes(before, after, "cached_tokens")
    client = usage["prompt_tokens_details"]["cached_tokens"]
    assert client == cached[prefiller] > 0
    assert cached[name_of(stack, response)] == usage["prompt_tokens"] - 1 != client


async def test_a_client_sent_prefiller_never_reaches_anything(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    outsider = LocalServer("answer")
    await outsider.start()
    try:
        before = await counters(http, stack.sims)
        # Through the gateway: stripped on the decode-only decision (else the sidecar would answer
        # 403), replaced by the pool's prefiller on the prefill-decode one.
        short, _ = await complete(http, stack.gateway_url, "Say hi", prefiller=outsider.hostport)
        long, _ = await complete(http, stack.gateway_url, long_prompt(), prefiller=outsider.hostport)
        assert (short.status, long.status) == (200, 200)
        after = await counters(http, stack.sims)
        ((prefiller, legs),) = changes(before, after, "prefill_only").items()
        assert prefiller in {p.name for p in prefillers(stack)} and legs == 1
        # Bypassing the gateway: the sidecar's allowlist (host AND port) refuses the outsider, and
        # also a pool host on a port that is no pool endpoint (here: a decode engine's own port).
        decode = stack.serving_endpoints[0]
        for target in (outsider.hostport, f"127.0.0.1:{decode.engine_port}"):
            refused, _ = await complete(http, f"http://{decode.hostport}", long_prompt(), prefiller=target)
            assert refused.status == 403
        assert outsider.requests == 0
    finally:
        await outsider.stop()


async def ready_pods(http: aiohttp.ClientSession, stack: Stack) -> float:
    async with http.get(f"http://127.0.0.1:{stack.epp_ports['metrics_port']}/metrics") as response:
        text = await response.text()
    return float(re.findall(r"^inference_pool_ready_pods\{.*\} (\S+)$", text, re.M)[0])


async def test_a_dead_prefiller_is_dropped_by_the_epp_and_refused_by_the_sidecar(
    tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession
) -> None:
    """Documented outcome (docs/pd.md): a request already routed to a dead prefiller gets 502 from
    the sidecar; once the EPP's scrape of it fails (a refused connection marks it unhealthy at once)
    prefills go to the surviving prefiller."""
    async with pd_stack(tmp_path_factory.mktemp("pd-dead")) as stack:
        dead, alive = prefillers(stack)
        await stack.sim_process(dead.name).kill()
        decode = stack.serving_endpoints[0]
        routed, error = await complete(
            http, f"http://{decode.hostport}", long_prompt(), prefiller=dead.hostport
        )
        assert routed.status == 502 and dead.hostport in error["error"]

        async def dropped() -> bool | None:
            return True if await ready_pods(http, stack) == len(stack.sims) - 1 else None

        await wait_until(dropped, "the EPP to drop the dead prefiller", timeout=10)
        live = [alive, *stack.serving_endpoints]
        before = await counters(http, live)
        statuses = [(await complete(http, stack.gateway_url, long_prompt()))[0].status for _ in range(4)]
        after = await counters(http, live)
        assert statuses == [200] * 4
        assert changes(before, after, "prefill_only") == {alive.name: 4}
