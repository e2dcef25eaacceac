"""ext_proc TLS: a client that trusts the served certificate completes a real gRPC call."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.extproc.server import Health, bind, health_server
from epp.tls import (
    Authority,
    TlsOptions,
    add_arguments,
    options_from_args,
    self_signed_certificate,
    server_credentials,
)


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


def mutual_tls_server(tmp_path: Path, authority: Authority) -> grpc.ServerCredentials:
    key, cert = authority.issue("epp", ("epp",))
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "ca.crt").write_bytes(authority.certificate_pem)
    credentials = server_credentials(TlsOptions(cert_path=tmp_path, client_ca_path=tmp_path / "ca.crt"))
    assert credentials is not None
    return credentials


async def health_with_client_cert(
    credentials: grpc.ServerCredentials, trusted: bytes, client: tuple[bytes, bytes] | None
) -> int:
    """A real TLS handshake and gRPC call, presenting `client` (key, certificate) or nothing."""
    server = health_server(Health(lambda: True))
    port = bind(server, "127.0.0.1:0", credentials)
    await server.start()
    try:
        key, cert = client if client is not None else (None, None)
        channel_credentials = grpc.ssl_channel_credentials(trusted, private_key=key, certificate_chain=cert)
        options = [("grpc.ssl_target_name_override", "epp")]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials, options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service="inference-extension"), timeout=5
            )
            return int(response.status)
    finally:
        await server.stop(None)


async def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(tmp_path: Path) -> None:
    authority = Authority()
    credentials = mutual_tls_server(tmp_path, authority)
    client = authority.issue("gateway", client=True)
    status = await health_with_client_cert(credentials, authority.certificate_pem, client)
    assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("client", ["none", "another CA"])
async def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_ca(
    tmp_path: Path, client: str
) -> None:
    authority = Authority()
    credentials = mutual_tls_server(tmp_path, authority)
    presented = None if client == "none" else Authority().issue("intruder", client=True)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await health_with_client_cert(credentials, authority.certificate_pem, presented)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_ca_needs_secure_serving() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="--client-ca-path needs --secure-serving"):
        options_from_args(parser.parse_args(["--secure-serving=false", "--client-ca-path=/ca.crt"]))
    options = options_from_args(parser.parse_args(["--client-ca-path=/ca.crt"]))
    assert options.client_ca_path == Path("/ca.crt")
