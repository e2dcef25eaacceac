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
from pathlib import Path

import httpx
import pytest

from bench.overload_ramp import h2load_point
from epp.config.objectives import load_objectives_file
from epp.headers import OBJECTIVE_HEADER
from epp.stack.envoy import EnvoyOptions
from tests.integration.conftest import StackFactory
from tests.integration.test_quota_from_epp_e2e import BODY, RATE, flood_setup, poll_metric, poll_request

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

OBJECTIVES = Path(__file__).parents[2] / "bench" / "configs" / "objectives.yaml"  # critical 1, sheddable -1
CRITICAL = {OBJECTIVE_HEADER: "critical"}
SHEDDABLE = {OBJECTIVE_HEADER: "sheddable"}
FLOOD_RATE = 3000  # sheddable requests per second offered: several times what one EPP serves here
FLOOD_SECONDS = 10.0  # long enough for the limit to bind on a loaded host
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
        critical: list[httpx.Response] = []
        try:
            await poll_metric(client, stack, RATE, lambda rate: float(rate) > 0, until=flood)
            refused = await poll_request(
                client, lambda r: r.headers.get("x-gateway-limit") == "quota", flood, SHEDDABLE
            )
            while not flood.done() and len(critical) < 200:  # the critical objective, while it binds
                critical.append(await client.post("/v1/completions", json=BODY, headers=CRITICAL))
        finally:
            results, _ = await flood

        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[429] > 0, statuses
        assert refused.status_code == 429 and refused.headers.get("x-gateway-limit") == "quota", refused.text
        # every critical request passed the gateway's quota, and the EPP's own guard, shedding the
        # sheddable requests that reach it instead, served nearly all (its 1 s bound holds for
        # every priority; measured: 74 of 74 and 59 of 59, against 6 of 47 before it read the
        # objective; with one bucket, 37 of 69 got the quota's 429)
        assert len(critical) >= 20, len(critical)
        limited = [r for r in critical if r.headers.get("x-gateway-limit") == "quota"]
        assert not limited, (len(limited), len(critical))
        served = Counter(r.status_code for r in critical)
        assert served[200] >= 0.9 * len(critical), served
