"""Responses API follow-ups through real Envoy + EPP + simulators: each simulator keeps its stored
responses in its own memory, as vLLM does, so a follow-up naming `previous_response_id` succeeds
only where that response was made. With previous-response-affinity-filter every follow-up of a
conversation (JSON and streamed) lands there; without it, follow-ups spread and get vLLM's 404."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from epp.replicas.local_redis import redis_server_path
from epp.stack.envoy import BODY_MODES, EnvoyOptions
from tests.integration.conftest import RANDOM_ONLY, StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WITH_AFFINITY = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: previous-response-affinity-filter
- type: random-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: previous-response-affinity-filter
  - pluginRef: random-picker
"""
FOLLOW_UPS = 12
BODY = {"model": "sim-model", "max_output_tokens": 2, "ignore_eos": True}


async def respond(
    client: httpx.AsyncClient, stream: bool, **fields: Any
) -> tuple[httpx.Response, str | None]:
    """One /v1/responses call: the HTTP response and the id of the response it made (a streamed
    one's from its `response.created` event)."""
    body = {**BODY, "stream": stream, **fields}
    if not stream:
        response = await client.post("/v1/responses", json=body)
        return response, response.json().get("id") if response.status_code == 200 else None
    async with client.stream("POST", "/v1/responses", json=body) as response:
        await response.aread()
    if response.status_code != 200:
        return response, None
    first = next(line for line in response.text.splitlines() if line.startswith("data: "))
    return response, orjson.loads(first.removeprefix("data: "))["response"]["id"]


@pytest.mark.parametrize("body_mode", BODY_MODES)
async def test_every_follow_up_lands_where_its_response_was_made(
    make_stack: StackFactory, body_mode: str
) -> None:
    envoy = EnvoyOptions(listen_port=0, admin_port=0, body_mode=body_mode)
    stack_context = make_stack("previous", envoy=envoy, epp_args=["--config-text", WITH_AFFINITY])
    async with stack_context as stack, httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        first, previous = await respond(client, stream=False, input="Where do rivers start?")
        assert first.status_code == 200, first.text
        pod = first.headers["x-inference-pod"]
        for turn in range(FOLLOW_UPS):
            # Alternate JSON and streamed turns: the EPP learns each new id from either.
            response, previous = await respond(
                client, stream=turn % 2 == 0, input=f"And then {turn}?", previous_response_id=previous
            )
            assert response.status_code == 200, (turn, response.text)
            assert response.headers["x-inference-pod"] == pod, turn


async def test_without_it_follow_ups_spread_and_get_vllms_404(make_stack: StackFactory) -> None:
    stack_context = make_stack("spread", epp_args=["--config-text", RANDOM_ONLY])
    async with stack_context as stack, httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        first, response_id = await respond(client, stream=False, input="Where do rivers start?")
        assert first.status_code == 200, first.text
        answers = [
            (await respond(client, stream=False, input="And then?", previous_response_id=response_id))[0]
            for _ in range(FOLLOW_UPS)
        ]
    failed = [r for r in answers if r.status_code != 200]
    # Random over 3 simulators: all 12 on the first one's has probability 3**-12.
    assert failed, [r.headers["x-inference-pod"] for r in answers]
    for response in failed:
        assert response.status_code == 404
        assert response.headers["x-inference-pod"] != first.headers["x-inference-pod"]
        assert response.json() == {
            "object": "error",
            "message": f"Response with id '{response_id}' not found.",
            "type": "invalid_request_error",
            "param": "response_id",
            "code": 404,
        }


async def routes_received(client: httpx.AsyncClient, metrics_ports: list[int], count: int) -> None:
    """Polls (bounded) until the workers together have received `count` shared routes."""
    received = 0.0
    for _ in range(200):
        received = 0.0
        for port in metrics_ports:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            received += sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('epp_replica_sync_routes_total{direction="received"}')
            )
        if received >= count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"the workers received {received:g} shared routes, not {count}")


@pytest.mark.skipif(redis_server_path() is None, reason="needs redis-server (apt-get install redis-server)")
async def test_worker_processes_share_the_pins(make_stack: StackFactory) -> None:
    """`--workers 2` behind Envoy's 4 connections: a follow-up often reaches the worker that did
    not see its response, which knows the pin from the other through their Redis."""
    stack_context = make_stack(
        "workers", epp_args=["--workers=2", "--config-text", WITH_AFFINITY], epp_connections=4
    )
    async with stack_context as stack, httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        ports = [w["metrics_port"] for w in stack.epp_ports["workers"]]  # type: ignore[index]
        first, previous = await respond(client, stream=False, input="Where do rivers start?")
        assert first.status_code == 200, first.text
        for turn in range(FOLLOW_UPS):
            # A follow-up sent before the pin reaches the other worker can still miss it (the
            # documented race, about a Redis round trip): wait for its delivery, so that what is
            # tested is that the workers share pins.
            await routes_received(client, ports, turn + 1)
            response, previous = await respond(
                client, stream=turn % 2 == 0, input=f"And then {turn}?", previous_response_id=previous
            )
            assert response.status_code == 200, (turn, response.text)
            assert response.headers["x-inference-pod"] == first.headers["x-inference-pod"], turn


POLLS = 30


@pytest.mark.parametrize("body_mode", BODY_MODES)
async def test_background_responses_are_polled_and_cancelled_where_they_were_made(
    make_stack: StackFactory, body_mode: str
) -> None:
    """GET /v1/responses/{id} and POST /v1/responses/{id}/cancel end at their headers: the EPP
    routes them to the replica holding the response (any other answers vLLM's 404). Without the
    pin each poll would land on one of 3 simulators at random: 30 polls on the right one by chance
    has probability 3**-30."""
    envoy = EnvoyOptions(listen_port=0, admin_port=0, body_mode=body_mode)
    stack_context = make_stack("background", envoy=envoy, epp_args=["--config-text", WITH_AFFINITY])
    async with stack_context as stack, httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        created, response_id = await respond(
            client, stream=False, input="Where do rivers start?", background=True
        )
        assert created.status_code == 200 and created.json()["status"] == "queued", created.text
        pod = created.headers["x-inference-pod"]
        statuses = []
        for _ in range(POLLS):
            polled = await client.get(f"/v1/responses/{response_id}")
            assert polled.status_code == 200, polled.text
            assert polled.headers["x-inference-pod"] == pod
            statuses.append(polled.json()["status"])
        running, running_id = await respond(
            client, stream=False, input="And lakes?", background=True, max_output_tokens=2000
        )
        assert running.status_code == 200, running.text
        cancelled = await client.post(f"/v1/responses/{running_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.headers["x-inference-pod"] == running.headers["x-inference-pod"]
        # An id no replica pinned goes anywhere, as before: vLLM's 404.
        unknown = await client.get("/v1/responses/resp_unknown")
        assert unknown.status_code == 404
        assert unknown.json()["message"] == "Response with id 'resp_unknown' not found."
