"""Envoy's HTTP/2 connection to the EPP under a flood (h2load, nghttp2's C load generator: a Python
client cannot outrun the EPP on two cores) that overloads the EPP: every request is the EPP's
answer, served or refused with its 429, never a 5xx of the connection itself. Envoy's defaults on
that connection failed thousands of such requests with 503 on a loaded host: more than 1,024
streams open made Envoy connect again (its default stream limit per connection), and the new
connection's 1 s connect timeout failed the requests waiting for it; a backlog of stream resets
the EPP had not read yet was taken for a flood (`http2.outbound_control_flood`), the connection
closed with "protocol error"."""

from __future__ import annotations

import shutil
from collections import Counter

import httpx
import orjson
import pytest

from bench.overload_ramp import EPP_CONNECTION_STATS, h2load_point
from epp.stack.envoy import BODY_MODES, EnvoyOptions
from tests.integration.conftest import StackFactory
from tests.integration.test_quota_from_epp_e2e import envoy_stat

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

BODY = {"model": "sim-model", "prompt": "lorem ipsum dolor sit amet " * 38, "max_tokens": 1}  # 1 KB
FLOOD_RATE = 5000  # requests per second: five times what one EPP serves here
FLOOD_SECONDS = 3.0  # the flood's bound: FLOOD_RATE * FLOOD_SECONDS requests
# Envoy's counters of its connections to the EPP that a flood must leave at 0 (all but the count
# of connections made).
UNTOUCHED = tuple(f"cluster.epp.{name}" for name in EPP_CONNECTION_STATS if name != "upstream_cx_total")


@pytest.mark.parametrize("body_mode", BODY_MODES)
async def test_a_flood_gets_the_epps_answers_over_one_connection(
    make_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory, body_mode: str
) -> None:
    if shutil.which("h2load") is None:
        pytest.fail("h2load is missing: `make install` installs Debian's nghttp2-client")
    epp_args = ["--refresh-metrics-interval=50ms", "--queue-wait-target=50ms"]  # sheds the excess
    sim_args = ["--profile=tiny-test", "--time-scale=0.001", "--max-waiting=1000000"]  # never the bottleneck
    run_dir = tmp_path_factory.mktemp("flood")
    body = run_dir / "request.json"
    body.write_bytes(orjson.dumps(BODY))
    envoy = EnvoyOptions(listen_port=0, admin_port=0, body_mode=body_mode)
    async with (
        make_stack("flood", sims=2, sim_args=sim_args, epp_args=epp_args, envoy=envoy) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        first = await client.post("/v1/completions", json=BODY)  # opens Envoy's connection to the EPP
        assert first.status_code == 200, first.text
        url = stack.gateway_url + "/v1/completions"
        results, _ = await h2load_point(url, FLOOD_RATE, FLOOD_SECONDS, body, 32, run_dir / "h2load.log")

        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[429] > 0, statuses  # the flood did overload the EPP
        by_epp = await envoy_stat(client, stack, "http.gateway.ext_proc.immediate_responses_sent")
        assert by_epp == statuses[429], (statuses, by_epp)
        counters = {name: await envoy_stat(client, stack, name) for name in UNTOUCHED}
        assert counters == dict.fromkeys(UNTOUCHED, 0)
        # Every stream on the first connection, however many were open at once.
        assert await envoy_stat(client, stack, "cluster.epp.upstream_cx_total") == 1
