"""The rate-limit quota by priority through real Envoy, the EPP and a simulator: with the EPP's
InferenceObjectives listed in the gateway's quota (`epp run --quota-from-epp` with
`--objectives-file`), each objective has a bucket of its own; under a sheddable flood (h2load,
bounded) that overloads the EPP, the sheddable bucket gets the quota's 429 (`x-gateway-limit:
quota`) while the critical objective's requests pass the gateway's quota every time, and the EPP's
own overload guard sheds the sheddable requests that reach it rather than the critical ones. A
client's arbitrary objective names do not make buckets (they share the default one; a 1 MB one is
Envoy's 431)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bench.overload_ramp import h2load_point
from epp.config.objectives import load_objectives_file
from epp.headers import OBJECTIVE_HEADER
from epp.stack.envoy import EnvoyOptions
from tests.integration.conftest import StackFactory
from tests.integration.test_quota_from_epp_e2e import BODY, RATE, flood_setup, poll_metric

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

OBJECTIVES = Path(__file__).parents[2] / "bench" / "configs" / "objectives.yaml"  # critical 1, sheddable -1
CRITICAL = {OBJECTIVE_HEADER: "critical"}
SHEDDABLE = {OBJECTIVE_HEADER: "sheddable"}
FLOOD_RATE = 3000  # sheddable requests per second offered: several times what one EPP serves here
FLOOD_SECONDS = 10.0  # long enough for the limit to bind on a loaded host
CRITICAL_RATE = 20  # critical requests per second at most, as bench/overload_ramp.py --critical-rate
BUCKETS = r"^llm_d_epp_rate_limit_quota_buckets (\S+)$"
ALLOWED = r'^llm_d_epp_rate_limit_quota_reported_requests_total\{outcome="allowed"\} (\S+)$'


async def test_a_sheddable_flood_gets_the_quotas_429_and_the_critical_objective_does_not(
    make_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    epp_args, sim_args, body = flood_setup(tmp_path_factory, f"--objectives-file={OBJECTIVES}")
    names = tuple(load_objectives_file(OBJECTIVES))
    envoy = EnvoyOptions(listen_port=0, admin_port=0, quota_from_epp=True, quota_objectives=names)
    run_dir = body.parent
    async with (
        make_stack("quota-priority", sims=1, sim_args=sim_args, epp_args=epp_args, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        for headers in (CRITICAL, SHEDDABLE, {}):  # a bucket each, reported at its first request
            first = await client.post("/v1/completions", json=BODY, headers=headers)
            assert first.status_code == 200, first.text
        await poll_metric(client, stack, BUCKETS, lambda n: float(n) == 3)

        # Names the gateway does not list, one of them 16 KB long: the default bucket, no new ones
        # (each would be reported at once, at its first request).
        before = float(await poll_metric(client, stack, ALLOWED))
        strangers = [f"stranger-{i}" for i in range(300)] + ["x" * 16_384]
        for name in strangers:
            response = await client.post("/v1/completions", json=BODY, headers={OBJECTIVE_HEADER: name})
            assert response.status_code == 200, response.text
        # a 1 MB value: Envoy's codec refuses it (431, past its 60 KiB of headers) before any filter
        huge = await client.post("/v1/completions", json=BODY, headers={OBJECTIVE_HEADER: "x" * 1_000_000})
        assert huge.status_code == 431, huge.text
        # the gateway's next report (every 5 s) counts them, in the buckets there were
        await poll_metric(client, stack, ALLOWED, lambda n: float(n) >= before + len(strangers))
        assert float(await poll_metric(client, stack, BUCKETS)) == 3

        url = stack.gateway_url + "/v1/completions"
        flood = asyncio.ensure_future(
            h2load_point(
                url,
                FLOOD_RATE,
                FLOOD_SECONDS,
                body,
                32,
                run_dir / "h2load.log",
                (f"{OBJECTIVE_HEADER}: sheddable",),
            )
        )
        try:
            await poll_metric(client, stack, RATE, lambda rate: float(rate) > 0, until=flood)
            # sheddable requests until one gets the quota's 429, then critical ones while the limit
            # binds, each 8 at a time (a request waits its turn in the queues before the EPP, over
            # a second on a loaded host); the critical ones at CRITICAL_RATE at most, well within
            # the limit: a closed loop of 8 served at once outran the limit the EPP measured under
            # the flood on a slow host (65 of 407 got the quota's 429, rightly: the critical
            # bucket's allotment is the whole limit, no more)
            quota = lambda r: r.headers.get("x-gateway-limit") == "quota"  # noqa: E731
            sheddable = await concurrently(client, SHEDDABLE, flood, stop=quota)
            critical = await concurrently(client, CRITICAL, flood, pace=8 / CRITICAL_RATE)
        finally:
            results, _ = await flood

        statuses = Counter(status for status, _ in results)
        assert statuses[429] > 0, statuses  # (its 5xx, if any: test_quota_from_epp_e2e.py's concern)
        refused = [r for r in sheddable if quota(r)]
        assert refused, Counter(r.status_code for r in sheddable)
        assert refused[0].status_code == 429, refused[0].text
        # Every critical request passed the gateway's quota (with one bucket 37 of 69 got its 429),
        # and the EPP served most, its standing-queue controller shedding the sheddable requests
        # that reach it instead (before it read the objective, it refused 41 of 47; now, measured
        # at load average 7: 174 of 181 served, 7 shed as the flood ended, when no sheddable
        # request was left to shed).
        assert len(critical) >= 8, len(critical)  # one round at least
        outcomes = Counter(outcome(r) for r in critical)
        assert outcomes["quota"] == 0, outcomes
        assert outcomes["served"] >= 0.8 * len(critical), outcomes


async def concurrently(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    until: asyncio.Future[object],
    stop: Callable[[httpx.Response], bool] | None = None,
    pace: float = 0.0,
) -> list[httpx.Response]:
    """Completions with `headers`, 8 at a time (each sender starting one at most every `pace`
    seconds), until `until` is done, one passes `stop`, or 400."""
    responses: list[httpx.Response] = []
    loop = asyncio.get_running_loop()

    async def send() -> None:
        while not until.done() and len(responses) < 400 and not (stop and any(map(stop, responses))):
            started = loop.time()
            responses.append(await client.post("/v1/completions", json=BODY, headers=headers))
            await asyncio.sleep(started + pace - loop.time())

    await asyncio.gather(*(send() for _ in range(8)))
    return responses


def outcome(response: httpx.Response) -> str:
    """What answered a request: served, the gateway's quota, or which of the EPP's refusals."""
    if response.status_code == 200:
        return "served"
    if response.headers.get("x-gateway-limit") == "quota":
        return "quota"
    message = response.json()["error"]["message"]
    return "max-queue-wait" if "(--max-queue-wait)" in message else message
