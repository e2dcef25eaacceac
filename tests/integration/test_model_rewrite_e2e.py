"""InferenceModelRewrite through real Envoy: the client names an alias, the simulator serves the
target model, and the client gets its own model name back."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import orjson
import pytest

from epp.stack.envoy import EnvoyOptions
from tests.integration.conftest import StackFactory, stack_config
from tests.integration.helpers import nghttp_with_trailers

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

REWRITES = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: alias}
spec:
  poolRef: {name: standalone}
  rules:
    - matches: [{model: {value: friendly-name}}]
      targets: [{modelRewrite: sim-model}]
"""


async def test_a_rewritten_model_is_served_and_named_back(make_stack: StackFactory, tmp_path: Path) -> None:
    rewrites = tmp_path / "rewrites.yaml"
    rewrites.write_text(REWRITES)
    epp_args = [*stack_config(tmp_path).epp_args, f"--model-rewrites-file={rewrites}"]
    async with make_stack("rewrite", epp_args=epp_args) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
            body = {"model": "friendly-name", "prompt": "hello", "max_tokens": 3}
            response = await client.post("/v1/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == "friendly-name"
            unknown = await client.post("/v1/completions", json={**body, "model": "no-such-model"})
            assert unknown.status_code == 404, unknown.text
        async with httpx.AsyncClient(timeout=5) as client:
            page = (await client.get(f"http://127.0.0.1:{stack.epp_ports['metrics_port']}/metrics")).text
    decision = (
        'inference_extension_model_rewrite_decisions_total{model_name="friendly-name",'
        'model_rewrite_name="alias",target_model="sim-model"} 1.0'
    )
    assert decision in page


async def test_a_rewritten_body_ended_by_trailers_reaches_the_model_server_once_in_full_duplex(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """The rewritten body goes in the replacing headers reply (envoyproxy/envoy#45470): the
    simulator parses it (twice over, it answers 400) and serves the target model."""
    rewrites = tmp_path / "rewrites.yaml"
    rewrites.write_text(REWRITES)
    epp_args = [*stack_config(tmp_path).epp_args, f"--model-rewrites-file={rewrites}"]
    envoy = EnvoyOptions(listen_port=0, admin_port=0, body_mode="full-duplex")
    async with make_stack("rewrite-trailers", sims=1, epp_args=epp_args, envoy=envoy) as stack:
        body = orjson.dumps({"model": "friendly-name", "prompt": "hello", "max_tokens": 3})
        reply = orjson.loads(await nghttp_with_trailers(stack, "/v1/completions", body, tmp_path))
    assert reply.get("model") == "friendly-name", reply
    assert reply["usage"]["completion_tokens"] == 3


async def test_a_rewritten_body_reaches_the_simulator_with_integers_past_64_bits_as_written(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """The EPP read 10**20 as orjson's 1e+20 and wrote the rewritten body with `1e20`: a tool
    schema's `const` came back as `1e+20` in the call's arguments, and a seed past 64 bits got the
    simulator's 400 for a float instead of vLLM's, naming the integer sent."""
    rewrites = tmp_path / "rewrites.yaml"
    rewrites.write_text(REWRITES)
    epp_args = [*stack_config(tmp_path).epp_args, f"--model-rewrites-file={rewrites}"]
    parameters = {"type": "object", "properties": {"n": {"const": 10**20}}, "required": ["n"]}
    body = {
        "model": "friendly-name",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "client_field": {"id": -(2**70), "ok": 2**64 - 1},
    }
    headers = {"content-type": "application/json"}
    async with (
        make_stack("rewrite-bigint", sims=1, epp_args=epp_args) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        # json.dumps writes the integers whole.
        answer = await client.post("/v1/chat/completions", content=json.dumps(body), headers=headers)
        assert answer.status_code == 200, answer.text
        call = answer.json()["choices"][0]["message"]["tool_calls"][0]["function"]
        assert (answer.json()["model"], call["arguments"]) == (
            "friendly-name",
            '{"n": 100000000000000000000}',
        )
        seeded = json.dumps({**body, "seed": 10**20})
        refused = await client.post("/v1/chat/completions", content=seeded, headers=headers)
    message = "'seed' must be between -2**63 and 2**63 - 1 (a 64-bit integer), got 100000000000000000000"
    assert (refused.status_code, refused.json()["message"]) == (400, message)
