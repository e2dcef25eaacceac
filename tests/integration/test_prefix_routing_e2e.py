"""Prefix-aware routing pays through the real data path: the same shared-prefix workload, through
Envoy + EPP + 4 simulators, hits the simulators' prefix caches far more often with GIE's default
profile (prefix-cache-scorer) than with random-picker. Judged by the simulators' own reported
cached tokens, never by timing."""

from __future__ import annotations

import httpx
import pytest

from epp.stack.stack import Stack
from tests.integration.conftest import RANDOM_ONLY, StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GROUPS = 6
QUESTIONS = 8


def system_prompt(group: int) -> str:
    words = " ".join(f"rule{group}-{i} applies to every answer in this conversation" for i in range(60))
    return f"You are assistant number {group}. {words}."


async def cached_share(stack: Stack) -> float:
    """Fraction of prompt tokens the simulators served from their prefix caches."""
    prompt = cached = 0
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        for question in range(QUESTIONS):
            for group in range(GROUPS):
                body = {
                    "model": "sim-model",
                    "max_tokens": 2,
                    "messages": [
                        {"role": "system", "content": system_prompt(group)},
                        {"role": "user", "content": f"Question {question}: what is rule {question}?"},
                    ],
                }
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                usage = response.json()["usage"]
                prompt += usage["prompt_tokens"]
                cached += usage["prompt_tokens_details"]["cached_tokens"]
    return cached / prompt


async def test_prefix_cache_scorer_beats_random_on_cache_hits(make_stack: StackFactory) -> None:
    async with make_stack("prefix", sims=4) as stack:
        with_prefix = await cached_share(stack)
    async with make_stack("random", sims=4, epp_args=["--config-text", RANDOM_ONLY]) as stack:
        with_random = await cached_share(stack)
    # One miss per group with prefix affinity (about 7/8 of prompt tokens cached); random spreads
    # each group over all four simulators and misses once per (group, simulator) pair.
    assert with_prefix >= 0.75, (with_prefix, with_random)
    assert with_prefix - with_random >= 0.15, (with_prefix, with_random)
