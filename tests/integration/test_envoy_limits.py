"""Envoy's limits through real Envoy: a circuit breaker reached is a JSON 503 that names the limit
(with Retry-After for the pool's), not a 500 blaming the EPP; the gateway's rate and adaptive
concurrency limits are JSON 429s naming theirs, answered without the EPP."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from epp.stack.envoy import LIMIT_HEADER, LIMIT_MESSAGES, EnvoyOptions
from tests.integration.conftest import StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "sim-model"
SLOW_SIM = ["--time-scale=1"]  # the default profile's real-time decode: 2,000 tokens take seconds
LONG = {"model": MODEL, "prompt": "a long one", "max_tokens": 2000, "stream": True}
SHORT = {"model": MODEL, "prompt": "hi", "max_tokens": 1}


@pytest.mark.parametrize(
    ("limits", "message", "retry_after"),
    [
        ({"pool_max_requests": 1}, LIMIT_MESSAGES["pool"], "1"),
        ({"epp_max_requests": 1}, LIMIT_MESSAGES["epp"], None),
    ],
    ids=["pool", "epp"],
)
async def test_a_circuit_breaker_reached_is_a_json_503_naming_it(
    make_stack: StackFactory, limits: dict[str, int], message: str, retry_after: str | None
) -> None:
    envoy = EnvoyOptions(listen_port=0, admin_port=0, **limits)  # type: ignore[arg-type]
    async with (
        make_stack("limits", sims=1, sim_args=SLOW_SIM, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
        client.stream("POST", "/v1/completions", json=LONG) as held,
    ):
        assert held.status_code == 200
        lines = held.aiter_lines()
        assert (await anext(lines)).startswith("data: ")  # the generation is under way
        # HTTP/1.1 upstream: over max_connections a request waits as pending; one more than
        # max_pending_requests overflows. (The EPP's cluster is HTTP/2: max_requests.)
        pending = asyncio.ensure_future(client.post("/v1/completions", json=SHORT))
        if "pool_max_requests" in limits:
            await poll_stat(client, stack.admin_url, "cluster.pool.upstream_rq_pending_active", 1)
        refused = await client.post("/v1/completions", json=SHORT)
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/json"
        error = refused.json()["error"]
        assert error["message"] == message
        assert error["code"] == 503
        assert refused.headers.get("retry-after") == retry_after
        pending.cancel()


async def poll_stat(client: httpx.AsyncClient, admin: str, name: str, value: int) -> None:
    for _ in range(500):
        stats = (await client.get(f"{admin}/stats", params={"filter": f"^{name}$"})).text
        if f"{name}: {value}" in stats:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {value}: {stats}")


async def test_the_gateways_rate_limit_is_a_json_429_without_the_epp(make_stack: StackFactory) -> None:
    envoy = EnvoyOptions(listen_port=0, admin_port=0, rate_limit=1)  # one token a second
    async with (
        make_stack("rate-limit", sims=1, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        answers = await asyncio.gather(*(client.post("/v1/completions", json=SHORT) for _ in range(5)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses[0] == 200 and statuses[-1] == 429, statuses
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["message"] == LIMIT_MESSAGES["rate"].format(rate=1)
        assert refused.headers[LIMIT_HEADER] == "rate"
        # refused before ext_proc, and its response not sent to the EPP either: only the admitted
        # requests opened an ext_proc stream
        admitted = statuses.count(200)
        assert await stat(client, stack.admin_url, "http.gateway.ext_proc.streams_started") == admitted


async def test_the_adaptive_concurrency_limit_is_a_json_429_naming_it_without_the_epp(
    make_stack: StackFactory,
) -> None:
    # The gradient controller starts by measuring the latency at its minimum concurrency (here 1):
    # while one request waits for its response, the next is over the limit.
    envoy = EnvoyOptions(listen_port=0, admin_port=0, adaptive_concurrency=True, adaptive_concurrency_min=1)
    async with (
        make_stack("adaptive", sims=1, sim_args=SLOW_SIM, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        # the wrapped ext_proc still honours its per-route off switch (a path outside the policy)
        assert (await client.get("/metrics")).status_code == 404
        assert await stat(client, stack.admin_url, "http.gateway.ext_proc.streams_started") == 0
        held = asyncio.ensure_future(client.post("/v1/completions", json={**LONG, "stream": False}))
        await poll_stat(client, stack.admin_url, "cluster.pool.upstream_rq_active", 1)
        streams = await stat(client, stack.admin_url, "http.gateway.ext_proc.streams_started")

        refused = await client.post("/v1/completions", json=SHORT)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"] == "1"
        assert refused.headers[LIMIT_HEADER] == "concurrency"
        error = refused.json()["error"]
        assert error["message"] == LIMIT_MESSAGES["concurrency"]
        assert error["type"] == "ConcurrencyLimited - reached_concurrency_limit"
        assert error["code"] == 429
        blocked = "http.gateway.adaptive_concurrency.gradient_controller.rq_blocked"
        assert await stat(client, stack.admin_url, blocked) == 1
        # refused before ext_proc, its response not sent to the EPP either: the EPP never saw it
        assert await stat(client, stack.admin_url, "http.gateway.ext_proc.streams_started") == streams
        held.cancel()


async def stat(client: httpx.AsyncClient, admin: str, name: str) -> int:
    text = (await client.get(f"{admin}/stats", params={"filter": f"^{name}$"})).text
    assert text.startswith(f"{name}: "), text
    return int(text.split(":")[1])


async def test_admission_control_refuses_at_the_door_what_the_epp_refuses_and_lets_the_rest_through(
    make_stack: StackFactory,
) -> None:
    # The EPP admits one stream at a time: while a long response holds it, the EPP refuses every new
    # request itself (429), and Envoy's admission control, fed by those 429s, refuses the next ones
    # before ext_proc; once the long response is over the EPP serves again and Envoy lets all through.
    envoy = EnvoyOptions(
        listen_port=0, admin_port=0, admission_control_aggression=1, admission_control_window="1s"
    )
    async with (
        make_stack(
            "admission", sims=1, sim_args=SLOW_SIM, epp_args=["--max-concurrent-streams=1"], envoy=envoy
        ) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        held = asyncio.ensure_future(client.post("/v1/completions", json={**LONG, "stream": False}))
        await poll_stat(client, stack.admin_url, "cluster.pool.upstream_rq_active", 1)
        streams = await stat(client, stack.admin_url, "http.gateway.ext_proc.streams_started")

        refusals = [await client.post("/v1/completions", json=SHORT) for _ in range(40)]
        assert {r.status_code for r in refusals} == {429}
        at_the_door = [r for r in refusals if r.headers.get(LIMIT_HEADER) == "admission"]
        by_the_epp = [r for r in refusals if LIMIT_HEADER not in r.headers]
        assert len(at_the_door) + len(by_the_epp) == 40
        assert by_the_epp[0] is refusals[0]  # nothing refused yet: the first reaches the EPP
        assert "--max-concurrent-streams" in by_the_epp[0].json()["error"]["message"]
        # each refusal at the door raises the share; with the EPP's refusals only, it stays above half
        assert len(at_the_door) >= 20, (len(at_the_door), len(by_the_epp))
        refused = at_the_door[0]
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["message"] == LIMIT_MESSAGES["admission"]
        assert error["type"] == "AdmissionControl - denied_by_admission_control"
        assert error["code"] == 429
        rejected = "http.gateway.admission_control.rq_rejected"
        assert await stat(client, stack.admin_url, rejected) == len(at_the_door)
        # only the EPP's 429s count as failures, not the filter's own refusals
        failures = "http.gateway.admission_control.rq_failure"
        assert await stat(client, stack.admin_url, failures) == len(by_the_epp)
        # refused before ext_proc, and its response not sent to the EPP either
        started = await stat(client, stack.admin_url, "http.gateway.ext_proc.streams_started")
        assert started == streams + len(by_the_epp)

        held.cancel()
        await poll_stat(client, stack.admin_url, "cluster.pool.upstream_rq_active", 0)
        # the 429s leave the window: every request is served again (refusals meanwhile are Envoy's
        # or the EPP's 429s, never a failure)
        served = 0
        for _ in range(2000):
            response = await client.post("/v1/completions", json=SHORT)
            assert response.status_code in (200, 429), response.text
            served = served + 1 if response.status_code == 200 else 0
            if served == 20:
                break
        assert served == 20


async def test_admission_control_does_not_count_the_gateways_own_limits_refusals(
    make_stack: StackFactory,
) -> None:
    # With the rate limit on too, its 429s (a local reply, which Envoy passes through every encoder
    # filter) must not feed admission control: counted, they made it refuse most of what the rate
    # limit let through, so the EPP saw a fraction of the rate it was limited to.
    envoy = EnvoyOptions(listen_port=0, admin_port=0, rate_limit=10, admission_control_aggression=1)
    async with (
        make_stack("admission-rate", sims=1, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        answers = await asyncio.gather(*(client.post("/v1/completions", json=SHORT) for _ in range(10)))
        limits = sorted(r.headers.get(LIMIT_HEADER, "") for r in answers)
        assert "rate" in limits and "" in limits, limits
        assert {r.status_code for r in answers if not r.headers.get(LIMIT_HEADER)} == {200}
        # the EPP refused nothing: nothing counts as a failure, and nothing after is refused at the door
        assert await stat(client, stack.admin_url, "http.gateway.admission_control.rq_failure") == 0
        for _ in range(5):
            await asyncio.sleep(0.15)  # under the rate limit's one token a 100 ms
            response = await client.post("/v1/completions", json=SHORT)
            assert response.status_code == 200, (response.status_code, response.headers.get(LIMIT_HEADER))
