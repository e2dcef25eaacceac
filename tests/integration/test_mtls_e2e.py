"""Mutual TLS between Envoy and the EPP with real handshakes: the Stack's EPP refuses a client
without a certificate from the run's CA, and Envoy refuses an EPP whose certificate does not
carry the expected name."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.stack.envoy import LIMIT_MESSAGES, EnvoyOptions
from epp.stack.stack import Stack
from epp.tls import CERT_FILE, KEY_FILE
from tests.integration.conftest import StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

BODY = {"model": "sim-model", "prompt": "hi", "max_tokens": 1}


async def check_health(stack: Stack, with_client_certificate: bool) -> int:
    ca = (stack.tls_dir / "ca.crt").read_bytes()
    key = cert = None
    if with_client_certificate:
        key = (stack.tls_dir / "gateway" / KEY_FILE).read_bytes()
        cert = (stack.tls_dir / "gateway" / CERT_FILE).read_bytes()
    credentials = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
    options = [("grpc.ssl_target_name_override", "epp")]
    address = f"127.0.0.1:{stack.epp_ports['grpc_port']}"
    async with grpc.aio.secure_channel(address, credentials, options) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference-extension"), timeout=5
        )
    return int(response.status)


async def test_the_epp_serves_the_gateway_and_refuses_a_client_without_a_certificate(
    make_stack: StackFactory,
) -> None:
    async with make_stack("mtls", sims=1) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
            assert (await client.post("/v1/completions", json=BODY)).status_code == 200
        assert (
            await check_health(stack, with_client_certificate=True) == health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check_health(stack, with_client_certificate=False)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_envoy_refuses_an_epp_certificate_without_the_expected_name(make_stack: StackFactory) -> None:
    envoy = EnvoyOptions(listen_port=0, admin_port=0, epp_san="not-the-epp")
    async with make_stack("mtls-san", sims=1, envoy=envoy) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
            response = await client.post("/v1/completions", json=BODY)
        assert response.status_code == 503
        assert response.json()["error"]["message"] == LIMIT_MESSAGES["epp"]
        stats = await stack.envoy_stats("cluster.epp.ssl.fail_verify_san")
        assert stats["cluster.epp.ssl.fail_verify_san"] >= 1
