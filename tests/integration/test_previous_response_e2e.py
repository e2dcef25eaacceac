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

from epp.replicas.local_redis import LocalRedis, free_port, redis_server_path
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


class DelayedReplies:
    """A TCP proxy in front of Redis holding each of its replies `delay` seconds (in order): a
    worker's pin reaches the other worker at least that long after the response it names."""

    def __init__(self, redis_port: int, delay: float) -> None:
        self.redis_port = redis_port
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> DelayedReplies:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _connected(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def requests() -> None:
            while chunk := await client_r.read(65536):
                redis_w.write(chunk)
                await redis_w.drain()
            redis_w.close()

        async def replies() -> None:
            while chunk := await redis_r.read(65536):
                held.put_nowait((loop.time() + self.delay, chunk))
            held.put_nowait((loop.time() + self.delay, b""))

        async def release() -> None:
            while True:
                due, chunk = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    client_w.close()
                    return
                client_w.write(chunk)
                await client_w.drain()

        for work in (requests(), replies(), release()):
            task = loop.create_task(work)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


async def metric_sums(client: httpx.AsyncClient, ports: list[int], name: str, label: str = "") -> list[float]:
    """Each worker's sum of metric `name`'s samples (those with `label` in their labels)."""
    sums = []
    for port in ports:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        sums.append(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(name + "{") and label in line
            )
        )
    return sums


PIN_DELAY = 0.1  # seconds each Redis reply is held: far longer than a follow-up takes to arrive
WAITING_AFFINITY = WITH_AFFINITY.replace(
    "- type: previous-response-affinity-filter\n",
    "- type: previous-response-affinity-filter\n  parameters: {peerPinWaitSeconds: 2}\n",
)
CROSSINGS = 2
MAX_TURNS = 40


@pytest.mark.skipif(redis_server_path() is None, reason="needs redis-server (apt-get install redis-server)")
async def test_a_follow_up_at_the_other_worker_waits_for_the_pin(make_stack: StackFactory) -> None:
    """`--workers 2` behind Envoy's 16 connections (the kernel picks a worker per connection: all
    on one, 1 in 2**15), their Redis's replies held PIN_DELAY: a follow-up reaching the worker
    that did not route its response always gets there before the pin (the race), waits for it
    (bounded by peerPinWaitSeconds) and lands where its response is stored. Turns go on until
    follow-ups crossed workers CROSSINGS times (which worker routed each turn: the one whose
    request count rose); without the wait, each crossing lands on another of 3 simulators with
    probability 2/3 and gets vLLM's 404."""
    async with LocalRedis(port=free_port()) as redis, DelayedReplies(redis.port or 0, PIN_DELAY) as proxy:
        stack_context = make_stack(
            "workers",
            epp_args=["--workers=2", f"--replica-sync={proxy.url}", "--config-text", WAITING_AFFINITY],
            epp_connections=16,
        )
        async with (
            stack_context as stack,
            httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
        ):
            ports = [w["metrics_port"] for w in stack.epp_ports["workers"]]  # type: ignore[index]
            routed = await metric_sums(client, ports, "inference_objective_request_total")
            first, previous = await respond(client, stream=False, input="Where do rivers start?")
            assert first.status_code == 200, first.text
            now = await metric_sums(client, ports, "inference_objective_request_total")
            worker = max(range(2), key=lambda i: now[i] - routed[i])
            crossings = turn = 0
            while crossings < CROSSINGS and turn < MAX_TURNS:
                routed = now
                response, previous = await respond(
                    client, stream=turn % 2 == 0, input=f"And then {turn}?", previous_response_id=previous
                )
                assert response.status_code == 200, (turn, response.text)
                assert response.headers["x-inference-pod"] == first.headers["x-inference-pod"], turn
                now = await metric_sums(client, ports, "inference_objective_request_total")
                routed_by = max(range(2), key=lambda i: now[i] - routed[i])
                crossings += routed_by != worker
                worker, turn = routed_by, turn + 1
            assert crossings == CROSSINGS, f"{turn} follow-ups, all routed by one worker"
            waited = await metric_sums(client, ports, "epp_previous_response_pin_waits_total")
            arrived = await metric_sums(
                client, ports, "epp_previous_response_pin_waits_total", 'outcome="arrived"'
            )
            assert sum(arrived) == sum(waited) >= CROSSINGS, (arrived, waited)


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
