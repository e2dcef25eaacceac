"""GIE's flow control through real Envoy: with one request in flight per endpoint allowed, a burst
queues in the EPP and is served one at a time, every request 200; a full queue is a JSON 429."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from epp.stack.envoy import EnvoyOptions
from tests.integration.conftest import StackFactory, stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "sim-model"
CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: concurrency-detector
  parameters: {maxConcurrency: 1}
saturationDetector: {pluginRef: concurrency-detector}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
flowControl:
  maxRequests: 4
  defaultRequestTTL: 8s
"""


def queue_outcomes(text: str, outcome: str) -> float:
    name = "inference_extension_flow_control_request_queue_duration_seconds_count{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and f'outcome="{outcome}"' in line
    )


async def test_a_burst_queues_in_the_epp_and_a_full_queue_is_a_429(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    config = tmp_path / "flow.yaml"
    config.write_text(CONFIG)
    epp_args = [*stack_config(tmp_path).epp_args, f"--config-file={config}"]
    async with (
        make_stack("flow", sims=1, epp_args=epp_args, sim_args=["--time-scale=1"]) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 20}
        answers = await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(8)))
        statuses = sorted(r.status_code for r in answers)
        # One in flight, four queued, the rest refused at capacity (at least 8 - 1 - 4).
        assert statuses.count(200) >= 5 and set(statuses) <= {200, 429}, statuses
        refused = [r for r in answers if r.status_code == 429]
        assert len(refused) >= 1
        assert refused[0].json()["error"]["message"] == (
            "inference error: ResourceExhausted - request rejected pre-queue: queue at capacity"
        )
        metrics = (await client.get(f"http://127.0.0.1:{stack.epp_ports['metrics_port']}/metrics")).text
        assert queue_outcomes(metrics, "Dispatched") == statuses.count(200)
        assert queue_outcomes(metrics, "RejectedCapacity") == len(refused)


@pytest.mark.parametrize(("extend", "status"), [("300s", 200), ("0", 503)])
async def test_a_queued_request_outlives_envoys_message_timeout(
    make_stack: StackFactory, tmp_path: Path, extend: str, status: int
) -> None:
    """Buffered mode: Envoy gives the EPP message_timeout (1 s here) per message; a request that
    waits longer in the queue asks for more (override_message_timeout) and is served; without
    asking (--queue-message-timeout=0) Envoy's message timeout cuts it: ext_proc fails open in
    buffered mode, and the request, not routed, gets the fail-closed route's 503."""
    config = tmp_path / "flow.yaml"
    config.write_text(CONFIG)
    epp_args = [
        *stack_config(tmp_path).epp_args,
        f"--config-file={config}",
        f"--queue-message-timeout={extend}",
    ]
    envoy = EnvoyOptions(listen_port=0, admin_port=0, message_timeout="1s")
    sim = ["--time-scale=10"]  # the long generation holds the endpoint ~5 s
    async with (
        make_stack("flow-timeout", sims=1, epp_args=epp_args, sim_args=sim, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        long = {"model": MODEL, "prompt": "hi", "max_tokens": 1500, "stream": True}
        async with client.stream("POST", "/v1/completions", json=long) as held:
            lines = held.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # in flight: the pool is now saturated
            started = time.monotonic()
            queued = asyncio.ensure_future(
                client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
            )
            async for _ in lines:
                pass
        assert time.monotonic() - started > 1.5  # the queued request waited past the message timeout
        answer = await queued
        assert answer.status_code == status, answer.text
