"""ext_proc TLS: a client that trusts the served certificate completes a real gRPC call; with
--enable-cert-reload a replaced pair is served to new connections, a broken one is refused."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp import serve
from epp.cli import build_parser
from epp.extproc.server import Health, bind, health_server
from epp.stack.processes import wait_until
from epp.tls import (
    CERT_FILE,
    KEY_FILE,
    Authority,
    ServingCertificate,
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


# --- --enable-cert-reload -------------------------------------------------------------------------


def write_pair(directory: Path, key: bytes, cert: bytes) -> None:
    """As a Secret volume or cert-manager would: each file replaced whole (write, then rename)."""
    for name, pem in ((KEY_FILE, key), (CERT_FILE, cert)):
        scratch = directory / f".{name}.tmp"
        scratch.write_bytes(pem)
        os.replace(scratch, directory / name)


async def peer_certificate(port: int) -> bytes:
    """The certificate a new TLS connection to 127.0.0.1:port is served (PEM), from a plain TLS client."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.transport.abort()
    return ssl.DER_cert_to_PEM_cert(der).encode()


def same_certificate(a: bytes, b: bytes) -> bool:
    return x509.load_pem_x509_certificate(a) == x509.load_pem_x509_certificate(b)


@pytest.fixture
async def reloading(tmp_path: Path) -> AsyncIterator[tuple[ServingCertificate, int]]:
    """A health server on --cert-path tmp_path with reloading, polled every 20 ms."""
    write_pair(tmp_path, *self_signed_certificate("first"))
    certificate = ServingCertificate(TlsOptions(cert_path=tmp_path, reload=True, reload_interval=0.02))
    server = health_server(Health(lambda: True))
    port = bind(server, "127.0.0.1:0", certificate.credentials())
    await server.start()
    await certificate.start()
    yield certificate, port
    await certificate.stop()
    await server.stop(None)


async def until_served(port: int, cert: bytes) -> None:
    async def probe() -> bool | None:
        return True if same_certificate(await peer_certificate(port), cert) else None

    await wait_until(probe, "the new certificate to be served", 5, interval=0.02)


async def test_a_replaced_certificate_is_served_to_new_connections(
    reloading: tuple[ServingCertificate, int], tmp_path: Path
) -> None:
    certificate, port = reloading
    first = (tmp_path / CERT_FILE).read_bytes()
    assert same_certificate(await peer_certificate(port), first)

    key, cert = self_signed_certificate("second")
    write_pair(tmp_path, key, cert)
    await until_served(port, cert)
    assert certificate.loads == 2
    # A gRPC client that trusts only the new certificate completes a call.
    assert await health_over_tls_port(port, cert, "second") == health_pb2.HealthCheckResponse.SERVING


async def test_a_broken_edit_keeps_the_previous_certificate(
    reloading: tuple[ServingCertificate, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certificate, port = reloading
    first = (tmp_path / CERT_FILE).read_bytes()
    with caplog.at_level(logging.ERROR, logger="epp.tls"):
        (tmp_path / CERT_FILE).write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
        await wait_until(
            lambda: _logged(caplog, "not reloaded"), "the broken certificate to be reported", 5, interval=0.02
        )
        assert same_certificate(await peer_certificate(port), first)

        # A well-formed certificate with some other pair's key: refused as well.
        caplog.clear()
        write_pair(tmp_path, self_signed_certificate()[0], self_signed_certificate()[1])
        await wait_until(
            lambda: _logged(caplog, "is not the key of"), "the mismatched pair", 5, interval=0.02
        )
        assert same_certificate(await peer_certificate(port), first)
    assert certificate.loads == 1
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1  # once per change

    key, cert = self_signed_certificate("fixed")
    write_pair(tmp_path, key, cert)
    await until_served(port, cert)


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> Awaitable[bool | None]:
    async def probe() -> bool | None:
        return True if text in caplog.text else None

    return probe()


async def health_over_tls_port(port: int, trusted_cert: bytes, name: str) -> int:
    channel_credentials = grpc.ssl_channel_credentials(root_certificates=trusted_cert)
    options = [("grpc.ssl_target_name_override", name)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials, options) as channel:
        request = health_pb2.HealthCheckRequest(service="inference-extension")
        response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        return int(response.status)


def test_reload_without_cert_path_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    args = build_parser("serve").parse_args(["serve", "--endpoint", "127.0.0.1:8000", "--enable-cert-reload"])
    with caplog.at_level(logging.WARNING):
        options = options_from_args(args)
    assert not options.reload
    assert "--enable-cert-reload without --cert-path" in caplog.text


def test_a_mismatched_pair_fails_at_startup(tmp_path: Path) -> None:
    write_pair(tmp_path, self_signed_certificate()[0], self_signed_certificate()[1])
    with pytest.raises(ValueError, match="is not the key of"):
        server_credentials(TlsOptions(cert_path=tmp_path))


async def test_epp_serve_reloads_its_ext_proc_certificate(tmp_path: Path) -> None:
    """The wiring in `epp serve`: --cert-path with --enable-cert-reload on the ext_proc port."""
    write_pair(tmp_path, *self_signed_certificate("first"))
    args = build_parser("serve").parse_args(
        [
            "serve",
            "--endpoint=127.0.0.1:8000",
            "--host=127.0.0.1",
            "--grpc-port=0",
            "--grpc-health-port=0",
            "--metrics-port=0",
            f"--cert-path={tmp_path}",
            "--enable-cert-reload",
            "--drain-timeout=0s",
        ]
    )
    options = serve.options_from_args(args)
    assert options.tls_options.reload
    options.tls_options = TlsOptions(cert_path=tmp_path, reload=True, reload_interval=0.02)
    picker = serve.EndpointPicker(options)
    await picker.start()
    try:
        assert same_certificate(await peer_certificate(picker.grpc_port), (tmp_path / CERT_FILE).read_bytes())
        key, cert = self_signed_certificate("second")
        write_pair(tmp_path, key, cert)
        await until_served(picker.grpc_port, cert)
    finally:
        await picker.stop()


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


async def test_mutual_tls_survives_a_certificate_reload(tmp_path: Path) -> None:
    """With --enable-cert-reload the reloaded pair still asks clients for a certificate."""
    authority = Authority()
    mutual_tls_server(tmp_path, authority)
    certificate = ServingCertificate(
        TlsOptions(cert_path=tmp_path, client_ca_path=tmp_path / "ca.crt", reload=True, reload_interval=0.05)
    )
    credentials = certificate.credentials()
    assert credentials is not None
    server = health_server(Health(lambda: True))
    port = bind(server, "127.0.0.1:0", credentials)
    await server.start()
    await certificate.start()

    async def check(client: tuple[bytes, bytes] | None) -> int:
        key, cert = client if client is not None else (None, None)
        channel_credentials = grpc.ssl_channel_credentials(
            authority.certificate_pem, private_key=key, certificate_chain=cert
        )
        options = [("grpc.ssl_target_name_override", "epp")]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials, options) as channel:
            request = health_pb2.HealthCheckRequest(service="inference-extension")
            return int((await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)).status)

    try:
        key, cert = authority.issue("epp", ("epp",))
        (tmp_path / "tls.key").write_bytes(key)
        (tmp_path / "tls.crt").write_bytes(cert)

        async def reloaded() -> bool | None:
            return True if certificate.loads == 2 else None

        await wait_until(reloaded, "the certificate reload", 10)
        assert await check(authority.issue("gateway", client=True)) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(None)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await certificate.stop()
        await server.stop(None)
