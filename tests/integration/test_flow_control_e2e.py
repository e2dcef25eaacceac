"""GIE's flow control through real Envoy: with one request in flight per endpoint allowed, a burst
queues in the EPP and is served one at a time, every request 200; a full queue is a JSON 429."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.stack.envoy import BODY_MODES, EnvoyOptions
from tests.integration.conftest import StackFactory, stack_config
from tests.unit.flowcontrol.flow_helpers import flow_control_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "sim-model"
QUEUE = {"maxRequests": 4, "defaultRequestTTL": "8s"}  # one request routes per endpoint, four wait
CONFIG = flow_control_config(QUEUE)


def queue_outcomes(text: str, outcome: str) -> float:
    name = "inference_extension_flow_control_request_queue_duration_seconds_count{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and f'outcome="{outcome}"' in line
    )


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series of the page, None when absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


async def test_a_burst_queues_in_the_epp_and_a_full_queue_is_a_429(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    config = tmp_path / "flow.yaml"
    config.write_text(CONFIG)
    epp_args = [*stack_config(tmp_path).epp_args, f"--config-file={config}", "--metrics-aliases=llm-d"]
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
        # llm-d's own: each request once by outcome; the pool (no roles) is one decode stage; the
        # global maxRequests 4 has its capacity gauge, empty now; the scraper's polls all answered.
        pool = {"inference_pool": "standalone"}
        total = "llm_d_epp_flow_control_requests_total"
        assert sample(metrics, total, outcome="Dispatched", priority="0", **pool) == statuses.count(200)
        assert sample(metrics, total, outcome="RejectedCapacity", priority="0", **pool) == len(refused)
        saturation = "llm_d_epp_flow_control_pool_saturation"
        stages = {
            stage: sample(metrics, saturation, stage=stage, **pool)
            for stage in ("prefill", "decode", "effective")
        }
        assert stages["prefill"] is None and stages["decode"] == stages["effective"] is not None
        assert sample(metrics, "llm_d_epp_flow_control_global_capacity_utilization_requests", **pool) == 0.0
        poll_errors = "llm_d_epp_datalayer_poll_errors_total"
        assert sample(metrics, poll_errors, source_type="metrics-data-source") == 0.0
        # Every request handled once (served or refused); each served whole response timed.
        assert sample(metrics, "llm_d_epp_request_processing_duration_seconds_count") == len(answers)
        flow = {
            "model_name": MODEL,
            "target_model_name": MODEL,
            "fairness_id": "default-flow",
            "priority": "0",
        }
        ttft = sample(metrics, "llm_d_epp_request_ttft_seconds_count", streaming="false", **flow)
        assert ttft == statuses.count(200)
        # llm-d's per-request families by flow; the simulator's pages have all llm-d's extractor maps.
        assert sample(metrics, "llm_d_epp_request_total", **flow) == statuses.count(200)
        refusals = sample(metrics, "llm_d_epp_request_error_total", error_code="ResourceExhausted", **flow)
        assert refusals == len(refused)
        extractor = {"source_type": "metrics-data-source", "extractor_type": "core-metrics-extractor"}
        assert sample(metrics, "llm_d_epp_datalayer_extract_errors_total", **extractor) == 0.0


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


EVICTION_CONFIG = flow_control_config({"enableEviction": True, **QUEUE})
OBJECTIVES = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: critical}
spec: {priority: 10}
"""


@pytest.mark.parametrize("body_mode", BODY_MODES)
async def test_a_sheddable_request_in_flight_is_evicted_for_a_critical_one(
    make_stack: StackFactory, tmp_path: Path, body_mode: str
) -> None:
    """llm-d router's enableEviction through Envoy: a sheddable (priority -1) request generating on
    the only slot is taken back when a critical one queues; its client gets the 429 and header at
    once, and the critical request is served."""
    config, objectives = tmp_path / "flow.yaml", tmp_path / "objectives.yaml"
    config.write_text(EVICTION_CONFIG)
    objectives.write_text(OBJECTIVES)
    epp_args = [
        *stack_config(tmp_path).epp_args,
        f"--config-file={config}",
        f"--objectives-file={objectives}",
    ]
    async with (
        make_stack(
            "evict",
            sims=1,
            epp_args=epp_args,
            sim_args=["--time-scale=10"],
            envoy=EnvoyOptions(listen_port=0, admin_port=0, body_mode=body_mode),
        ) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        metrics_url = f"http://127.0.0.1:{stack.epp_ports['metrics_port']}/metrics"

        async def post(objective: str, max_tokens: int) -> httpx.Response:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": max_tokens}
            headers = {"x-gateway-inference-objective": objective}
            return await client.post("/v1/completions", json=body, headers=headers)

        started = time.monotonic()
        batch = asyncio.ensure_future(post("batch", 1500))  # ~5 s of generation
        for _ in range(500):  # bounded: until it is in flight
            if "inference_objective_running_requests{" in (await client.get(metrics_url)).text:
                break
            await asyncio.sleep(0.01)
        critical = await post("critical", 1)
        evicted = await batch
        assert time.monotonic() - started < 4  # not waiting for the generation to end
        assert critical.status_code == 200, critical.text
        assert evicted.status_code == 429, evicted.text
        assert evicted.headers["x-llm-d-request-dropped-reason"] == "evicted"
        assert evicted.json()["error"]["message"] == (
            "inference error: ResourceExhausted - request evicted by flow control"
        )
        metrics = (await client.get(metrics_url)).text
        confirmed = [
            line
            for line in metrics.splitlines()
            if line.startswith("llm_d_epp_flow_control_revocations_total") and 'outcome="confirmed"' in line
        ]
        assert confirmed and confirmed[0].endswith(" 1.0"), confirmed
