"""ext_proc TLS: a client that trusts the served certificate completes a real gRPC call."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.extproc.server import Health, bind, health_server
from epp.tls import TlsOptions, self_signed_certificate, server_credentials


async def health_over_tls(credentials: grpc.ServerCredentials, trusted_cert: bytes) -> int:
    server = health_server(Health(lambda: True))
    port = bind(server, "127.0.0.1:0", credentials)
    await server.start()
    try:
        channel_credentials = grpc.ssl_channel_credentials(root_certificates=trusted_cert)
        options = [("grpc.ssl_target_name_override", "epp")]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials, options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service="inference-extension"), timeout=5
            )
            return int(response.status)
    finally:
        await server.stop(None)


@pytest.fixture
def cert_dir(tmp_path: Path) -> tuple[grpc.ServerCredentials, bytes]:
    """Credentials from a --cert-path directory, and the certificate a client would trust."""
    key, cert = self_signed_certificate()
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "tls.crt").write_bytes(cert)
    credentials = server_credentials(TlsOptions(cert_path=tmp_path))
    assert credentials is not None
    return credentials, cert


async def test_certificate_from_cert_path(cert_dir: tuple[grpc.ServerCredentials, bytes]) -> None:
    assert await health_over_tls(*cert_dir) == health_pb2.HealthCheckResponse.SERVING


async def test_a_fresh_self_signed_certificate_each_start() -> None:
    first, second = self_signed_certificate(), self_signed_certificate()
    assert first[1] != second[1]
    assert server_credentials(TlsOptions(secure_serving=True)) is not None


async def test_plaintext_when_secure_serving_is_off() -> None:
    assert server_credentials(TlsOptions(secure_serving=False)) is None


async def test_a_client_trusting_another_certificate_is_refused(
    cert_dir: tuple[grpc.ServerCredentials, bytes],
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await health_over_tls(cert_dir[0], self_signed_certificate()[1])
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
