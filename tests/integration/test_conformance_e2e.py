"""GIE's conformance EndpointPickerConfig (conformance/resources/base.yaml at GIE 1748e82, loaded
unchanged) through real Envoy: the test header picks the endpoint, and the served-endpoint
verifier reports back the endpoint the gateway says served, as GIE's conformance suite checks."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import StackFactory, stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

CONFORMANCE = (
    Path(__file__).parents[1]
    / "data"
    / "upstream"
    / "configs"
    / "gie-1748e82__conformance__resources__base.yaml"
)


async def test_the_verifier_reports_the_endpoint_the_test_header_chose(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    epp_args = [*stack_config(tmp_path).epp_args, f"--config-file={CONFORMANCE}"]
    async with (
        make_stack("conformance", epp_args=epp_args) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client,
    ):
        for sim in [*stack.sims, *stack.sims]:
            response = await client.post(
                "/v1/completions",
                json={"model": "sim-model", "prompt": "hello", "max_tokens": 2},
                headers={"test-epp-endpoint-selection": sim.hostport},
            )
            assert response.status_code == 200, response.text
            served = f"{response.headers['x-inference-host']}:{response.headers['x-inference-port']}"
            assert served == sim.hostport
            assert response.headers["x-conformance-test-served-endpoint"] == sim.hostport
            assert "x-gateway-destination-endpoint-served" not in response.headers
