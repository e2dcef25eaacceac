"""Precise prefix-cache routing through the real data path: Envoy, `epp serve` with llm-d's own
`sim-epp-kvcache-config.yaml` (token-producer on a simulator's render API, precise producer in
central mode) and two simulators publishing vLLM KV events over ZMQ with a small KV cache.

Requests follow what the simulators actually hold: after one simulator evicts a prompt's blocks
and the other caches them, the precise index sends the prompt to the one that has it, while the
approximate index (which only knows its own routing decisions) keeps sending it to the one that
lost it. Judged by the simulators' reported cached tokens, never by timing; waits are polls of the
EPP's KV-event counters against the simulators' published message counts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from epp.sim.server import STATS_PATH
from epp.stack.processes import free_port
from epp.stack.stack import SimEndpoint, Stack
from tests.integration.conftest import stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

UPSTREAM = Path(__file__).parents[1] / "data/upstream/configs"
PRECISE_CONFIG = UPSTREAM / "llmd-router-ebab687__deploy__config__sim-epp-kvcache-config.yaml"
APPROX_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 10
  - pluginRef: max-score-picker
"""
BLOCKS = 64  # KV-cache blocks per simulator (16 tokens each): room for the prompt and one filler
MODEL = "sim-model"
PROMPT = "You are the archivist. " + " ".join(
    f"entry {i} reads the ledger of year {1900 + i}" for i in range(70)
)


def filler(n: int) -> str:
    return f"Unrelated filler {n}: " + " ".join(f"word{n}x{i} padding text here" for i in range(110))


def kv_stack(run_dir: Path, events_port: int, config_text: str) -> Stack:
    """Two simulators with small KV caches publishing to `events_port`; the EPP's config has the
    first simulator's URL for the render API and binds the central socket on `events_port`."""
    text = config_text.replace("http://localhost:8000", "${SIM_URL}")
    text = text.replace("tcp://0.0.0.0:5557", f"tcp://127.0.0.1:{events_port}")
    text = text.replace("TinyLlama/TinyLlama-1.1B-Chat-v1.0", MODEL)
    return Stack(
        stack_config(
            run_dir,
            sims=2,
            sim_args=[
                "--profile=tiny-test",
                f"--num-gpu-blocks={BLOCKS}",
                f"--kv-events-endpoint=tcp://127.0.0.1:{events_port}",
            ],
            epp_config_template=text,
        )
    )


async def chat(client: httpx.AsyncClient, url: str, content: str, **fields: str) -> tuple[str, int]:
    """(the endpoint that served it, cached prompt tokens)."""
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": content}], **fields}
    response = await client.post(url + "/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    cached = response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    return response.headers.get("x-epp-destination", ""), int(cached)


async def metrics_page(client: httpx.AsyncClient, stack: Stack) -> str:
    return (await client.get(f"http://127.0.0.1:{stack.epp_ports['metrics_port']}/metrics")).text


def lookup_hits(page: str) -> float:
    hits = re.search(r"^llm_d_epp_kv_cache_index_lookup_hits_total (\S+)$", page, re.MULTILINE)
    return float(hits.group(1)) if hits else 0.0


async def received(client: httpx.AsyncClient, stack: Stack, sim: SimEndpoint) -> int:
    """KV-event messages the EPP took from `sim` (0 before the first)."""
    page = (await client.get(f"http://127.0.0.1:{stack.epp_ports['metrics_port']}/metrics")).text
    metric = "llm_d_epp_kv_cache_events_messages_received_total"
    pattern = rf'{metric}{{pod_identifier="{re.escape(sim.hostport)}"}} (\S+)'
    found = re.search(pattern, page)
    return int(float(found.group(1))) if found else 0


async def published(client: httpx.AsyncClient, sim: SimEndpoint) -> int:
    stats = (await client.get(f"http://{sim.host}:{sim.port}{STATS_PATH}")).json()
    return int(stats["kv_event_messages"])


async def poll(condition: Callable[[], Awaitable[bool]], what: str, attempts: int = 400) -> None:
    for _ in range(attempts):
        if await condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def subscribed(client: httpx.AsyncClient, stack: Stack) -> dict[str, int]:
    """Until every simulator's events reach the EPP (ZMQ drops what a publisher sends before the
    connection is up): each simulator announces an empty cache until the EPP has counted one.
    Returns, per simulator, published - received, which stays constant from then on."""
    for sim in stack.sims:

        async def arrived(sim: SimEndpoint = sim) -> bool:
            await client.post(f"http://{sim.host}:{sim.port}/reset_prefix_cache")
            return await received(client, stack, sim) > 0

        await poll(arrived, f"KV events from {sim.name}")
    return {sim.name: await published(client, sim) - await received(client, stack, sim) for sim in stack.sims}


async def settled(client: httpx.AsyncClient, stack: Stack, lost: dict[str, int]) -> None:
    """Until the EPP has applied every message the simulators published."""

    async def caught_up() -> bool:
        for sim in stack.sims:
            if await published(client, sim) - await received(client, stack, sim) != lost[sim.name]:
                return False
        return True

    await poll(caught_up, "the EPP to read every published KV event")


async def scenario(stack: Stack, precise: bool) -> tuple[str, str, int, int]:
    """Route PROMPT twice through the gateway (to X), make X evict it and Y cache it behind the
    EPP's back, then route it again. Returns (X, final destination, second cached, final cached)."""
    async with httpx.AsyncClient(timeout=30) as client:
        lost = await subscribed(client, stack) if precise else {}
        gateway = stack.gateway_url
        first, _ = await chat(client, gateway, PROMPT)
        if precise:
            await settled(client, stack, lost)
        second, cached_again = await chat(client, gateway, PROMPT)
        assert second == first
        x = next(s for s in stack.sims if s.hostport == first)
        y = next(s for s in stack.sims if s is not x)
        for n in range(3):  # X's small cache evicts PROMPT's blocks (oldest unused first)
            await chat(client, f"http://{x.host}:{x.port}", filler(n))
        _, cached_on_y = await chat(client, f"http://{y.host}:{y.port}", PROMPT)
        assert cached_on_y == 0
        _, y_holds = await chat(client, f"http://{y.host}:{y.port}", PROMPT)
        assert y_holds > 0
        if precise:
            await settled(client, stack, lost)
        final, cached_final = await chat(client, gateway, PROMPT)
        if precise:  # the render API tokenized every request, and lookups found blocks
            page = await metrics_page(client, stack)
            assert "llm_d_epp_tokenization_fallbacks_total{" not in page
            assert lookup_hits(page) > 0
        return first, final, cached_again, cached_final


async def test_precise_routing_follows_eviction_where_approximate_does_not(tmp_path: Path) -> None:
    async with kv_stack(tmp_path / "precise", free_port(), PRECISE_CONFIG.read_text()) as stack:
        x, final, again, cached = await scenario(stack, precise=True)
    assert again > 0, "the second request should hit the first one's blocks"
    assert final != x, "precise routing should leave the simulator that evicted the prompt"
    assert cached >= again, (cached, again)

    async with kv_stack(tmp_path / "approx", free_port(), APPROX_CONFIG) as stack:
        x, final, again, cached = await scenario(stack, precise=False)
    assert again > 0
    assert final == x, "the approximate index only knows where it sent the prompt"
    assert cached == 0, cached


async def test_a_salted_prompt_is_routed_to_the_simulator_holding_its_salted_blocks(tmp_path: Path) -> None:
    """A simulator caches a prompt under a `cache_salt` behind the EPP's back: the same salt
    through the gateway finds its blocks by their KV events (salt in block 0's extra keys) and
    goes there; another salt matches nothing and no simulator has it cached."""
    config = PRECISE_CONFIG.read_text()
    async with (
        kv_stack(tmp_path / "salted", free_port(), config) as stack,
        httpx.AsyncClient(timeout=30) as client,
    ):
        lost = await subscribed(client, stack)
        holder = stack.sims[1]
        await chat(client, f"http://{holder.host}:{holder.port}", PROMPT, cache_salt="tenant-a")
        await settled(client, stack, lost)
        before = lookup_hits(await metrics_page(client, stack))
        destination, cached = await chat(client, stack.gateway_url, PROMPT, cache_salt="tenant-a")
        assert lookup_hits(await metrics_page(client, stack)) > before
        assert (destination, cached > 0) == (holder.hostport, True)
        for sim in stack.sims:
            _, other_salt = await chat(client, f"http://{sim.host}:{sim.port}", PROMPT, cache_salt="tenant-b")
            assert other_salt == 0


async def complete(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[str, str, int]:
    """(the endpoint that served it, the text generated, cached prompt tokens)."""
    body = {"model": MODEL, "max_tokens": max_tokens, "ignore_eos": True, "prompt": prompt}
    response = await client.post(url + "/v1/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    cached = int(data["usage"]["prompt_tokens_details"]["cached_tokens"])
    return response.headers.get("x-epp-destination", ""), data["choices"][0]["text"], cached


async def test_a_follow_up_repeating_an_answer_matches_the_answers_blocks(tmp_path: Path) -> None:
    """A simulator caches and announces the full blocks of the tokens it generates, as vLLM does:
    a follow-up prompt repeating prompt and answer matches them in the precise index (the lookup's
    depth counts them) and at the simulator (its cached tokens), beyond the prompt's own blocks."""
    async with (
        kv_stack(tmp_path / "follow", free_port(), PRECISE_CONFIG.read_text()) as stack,
        httpx.AsyncClient(timeout=30) as client,
    ):
        lost = await subscribed(client, stack)
        holder = stack.sims[1]
        prompt = PROMPT[:400]
        _, answer, _ = await complete(client, f"http://{holder.host}:{holder.port}", prompt, 48)
        url = f"http://{holder.host}:{holder.port}/tokenize"
        tokens = (await client.post(url, json={"model": MODEL, "prompt": prompt})).json()
        prompt_blocks, answered_blocks = tokens["count"] // 16, (tokens["count"] + 48 - 1) // 16
        assert answered_blocks >= prompt_blocks + 2
        await settled(client, stack, lost)
        before = lookup_hits(await metrics_page(client, stack))
        destination, _, cached = await complete(client, stack.gateway_url, prompt + answer + " and then", 1)
        assert destination == holder.hostport
        assert lookup_hits(await metrics_page(client, stack)) - before == answered_blocks
        assert cached == answered_blocks * 16
