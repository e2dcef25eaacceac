"""Precise prefix-cache routing with the index in Redis (llm-d's `redisConfig`), through the real
data path: Envoy, an `epp serve` process running llm-d's `sim-epp-kvcache-config.yaml` with a
`redisConfig` added, two simulators publishing KV events, and a redis-server started here. The
scenario of test_precise_prefix_e2e (requests follow an eviction the EPP only learns from KV
events) passes with every block key held in Redis, where another replica would read it."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import asyncio as aioredis

from epp.datalayer.redis_address import DEFAULT_PREFIX
from epp.replicas.local_redis import LocalRedis, free_port, redis_server_path
from tests.integration.test_precise_prefix_e2e import PRECISE_CONFIG, kv_stack, scenario

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        redis_server_path() is None, reason="needs redis-server (apt-get install redis-server)"
    ),
]


async def test_precise_routing_through_the_redis_index(tmp_path: Path) -> None:
    async with LocalRedis(port=free_port()) as redis:
        text = PRECISE_CONFIG.read_text()
        anchor = "      kvBlockIndexConfig:\n"
        assert anchor in text
        text = text.replace(anchor, f"{anchor}        redisConfig: {{address: '{redis.url}'}}\n")
        async with kv_stack(tmp_path, free_port(), text) as stack:
            x, final, again, cached = await scenario(stack, precise=True)
            hostports = {sim.hostport for sim in stack.sims}
            client = aioredis.from_url(redis.url)
            try:
                keys = [key async for key in client.scan_iter(match=f"{DEFAULT_PREFIX}[0-9]*")]
                holders = set()
                for key in keys:
                    holders |= {pod.decode() for pod in await client.hkeys(key)}
            finally:
                await client.aclose()
    assert again > 0, "the second request should hit the first one's blocks"
    assert final != x, "precise routing should leave the simulator that evicted the prompt"
    assert cached >= again, (cached, again)
    assert keys and holders == hostports  # the EPP's index is in Redis: both simulators' blocks
