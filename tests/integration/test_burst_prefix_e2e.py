"""burst-prefix-cache-producer through the real data path: Envoy, `epp serve` with llm-d router's
`deploy/config/epp-burst-prefix-cache-config.yaml` (its token-producer on a simulator's render
API) and four simulators. A burst of rollout samples — several prompts, each sent several times at
once to a cold pool — lands one prompt per simulator, so each prompt is prefilled once: judged by
the destinations and by the simulators' reported cached tokens, never by timing."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from epp.stack.stack import Stack
from tests.integration.conftest import stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CONFIG = (
    Path(__file__).parents[1]
    / "data/upstream/configs/llmd-router-ebab687__deploy__config__epp-burst-prefix-cache-config.yaml"
)
MODEL = "sim-model"
SAMPLES = 6  # per prompt


def prompt(group: int) -> str:
    return f"Rollout prompt {group}: " + " ".join(f"step {i} of task {group}" for i in range(120))


async def test_each_prompt_of_a_burst_lands_on_one_simulator(tmp_path: Path) -> None:
    text = CONFIG.read_text().replace(
        "http://<vllm-service>.<namespace>.svc.cluster.local:8000", "${SIM_URL}"
    )
    text = text.replace("hf-repo/model-name", MODEL)
    async with (
        Stack(stack_config(tmp_path, sims=4, epp_config_template=text)) as stack,
        httpx.AsyncClient(timeout=30) as client,
    ):

        async def sample(group: int) -> tuple[int, str, int]:
            body = {
                "model": MODEL,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": prompt(group)}],
            }
            response = await client.post(stack.gateway_url + "/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            cached = response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            return group, response.headers["x-epp-destination"], int(cached)

        results = await asyncio.gather(*(sample(n % 3) for n in range(3 * SAMPLES)))
        page = (await client.get(f"http://127.0.0.1:{stack.epp_ports['metrics_port']}/metrics")).text
    where: dict[int, set[str]] = defaultdict(set)
    for group, destination, _ in results:
        where[group].add(destination)
    assert all(len(pods) == 1 for pods in where.values()), where
    assert len(set.union(*where.values())) == 3, "three prompts on a cold pool of four: three simulators"
    # Each prompt is prefilled once: every other sample on its simulator finds it cached.
    misses = [sum(cached == 0 for g, _, cached in results if g == group) for group in range(3)]
    assert misses == [1, 1, 1], [cached for _, _, cached in results]
    assert "llm_d_epp_tokenization_fallbacks_total{" not in page  # the render API tokenized them all
