"""llm-d router v0.10's TLS flags: --tls-min-version and --tls-cipher-suites held by gRPC's own
TLS on the ext_proc port (checked with real handshakes) or refused, and TLS on the metrics port
(--metrics-cert-dir, --metrics-client-ca-file)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from epp import serve
from epp.cli import parse_args
from epp.tls import GRPC_TLS12_SUITES, Authority, check_tls_policy
from tests.unit.test_gie_flags import running_picker

GRPC_SUITES = ",".join(GRPC_TLS12_SUITES)


@pytest.mark.parametrize(
    ("version", "suites"),
    [
        (None, None),
        ("VersionTLS12", None),
        ("VersionTLS10", None),
        (None, [GRPC_SUITES + ",TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]),
        (None, [",".join(GRPC_TLS12_SUITES[:2]), ",".join(GRPC_TLS12_SUITES[2:])]),  # repeated flag
    ],
)
def test_policies_grpc_already_keeps_hold(version: str | None, suites: list[str] | None) -> None:
    check_tls_policy(version, suites)


@pytest.mark.parametrize(
    ("version", "suites", "message"),
    [
        ("VersionTLS13", None, "cannot be limited to 1.3"),
        ("TLS1.2", None, "unknown TLS version 'TLS1.2'; supported values: VersionTLS10, "),
        (None, ["TLS_FAKE"], "unknown cipher suite 'TLS_FAKE'"),
        (
            None,
            ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
            "leaves out TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ),
    ],
)
def test_policies_grpc_would_break_are_refused(
    version: str | None, suites: list[str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_tls_policy(version, suites)


def test_the_flags_parse_and_matter_only_with_secure_serving() -> None:
    from epp import tls

    argv = ["--endpoint=127.0.0.1:1", "--tls-min-version=VersionTLS13", "--secure-serving=false"]
    assert not tls.options_from_args(parse_args(argv)).secure_serving
    with pytest.raises(ValueError, match="VersionTLS13"):
        tls.options_from_args(parse_args(argv[:-1]))


def handshake(port: int, maximum: ssl.TLSVersion, ciphers: str | None = None) -> str:
    """The TLS version a client limited to `maximum` (and `ciphers`, OpenSSL names) negotiates."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_alpn_protocols(["h2"])
    if ciphers is not None:
        context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        return str(tls.version())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_grpcs_tls_is_what_the_policy_check_assumes() -> None:
    """TLS 1.2 and 1.3 are served, TLS 1.1 is not; for TLS 1.2 an ECDHE AES-GCM suite is offered and
    a CBC one is not."""
    picker = await running_picker("--endpoint=127.0.0.1:1", "--secure-serving=true")
    try:
        port = picker.grpc_port
        assert await asyncio.to_thread(handshake, port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
        gcm = "ECDHE-ECDSA-AES128-GCM-SHA256"  # the self-signed key is ECDSA
        assert await asyncio.to_thread(handshake, port, ssl.TLSVersion.TLSv1_2, gcm) == "TLSv1.2"
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(handshake, port, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(handshake, port, ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0")
    finally:
        await picker.stop()


def write_pair(directory: Path, pair: tuple[bytes, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.key").write_bytes(pair[0])
    (directory / "tls.crt").write_bytes(pair[1])


async def mutual_tls_picker(tmp_path: Path, authority: Authority) -> serve.EndpointPicker:
    """A running picker whose metrics port serves `authority`'s certificate from tmp_path/certs to
    clients with one of its client certificates (tmp_path/client; its CA in tmp_path/ca.crt)."""
    write_pair(tmp_path / "certs", authority.issue("epp", ("localhost",)))
    (tmp_path / "ca.crt").write_bytes(authority.certificate_pem)
    write_pair(tmp_path / "client", authority.issue("prometheus", client=True))
    return await running_picker(
        "--endpoint=127.0.0.1:1",
        f"--metrics-cert-dir={tmp_path / 'certs'}",
        f"--metrics-client-ca-file={tmp_path / 'ca.crt'}",
    )


async def test_metrics_over_mutual_tls(tmp_path: Path) -> None:
    picker = await mutual_tls_picker(tmp_path, Authority())
    url = f"https://localhost:{picker.metrics_server.port}/metrics"
    trust = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    try:
        with_cert = ssl.create_default_context(cafile=tmp_path / "ca.crt")
        with_cert.load_cert_chain(tmp_path / "client" / "tls.crt", tmp_path / "client" / "tls.key")
        async with httpx.AsyncClient(verify=with_cert) as client:
            response = await client.get(url)
        assert response.status_code == 200 and "inference_pool_ready_pods" in response.text
        async with httpx.AsyncClient(verify=trust) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(url)
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(url.replace("https", "http"))
    finally:
        await picker.stop()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics-client-ca-file=/ca.crt"], "--metrics-client-ca-file requires --metrics-cert-dir"),
        (["--metrics-cert-dir={dir}"], "enables metrics TLS without authentication"),
        (
            ["--metrics-cert-dir={dir}/none", "--metrics-endpoint-auth=true"],
            "cannot load tls.crt and tls.key",
        ),
        (
            ["--metrics-cert-dir={dir}", "--metrics-client-ca-file={dir}/tls.key"],
            "--metrics-client-ca-file .*: no CA certificate loaded",
        ),
    ],
)
def test_metrics_tls_mistakes_are_refused_naming_the_flag(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    write_pair(tmp_path, Authority().issue("epp", ("localhost",)))
    args = parse_args(["--endpoint=127.0.0.1:1", *(a.format(dir=tmp_path) for a in argv)])
    with pytest.raises(ValueError, match=message):
        serve.options_from_args(args)


async def test_a_rotated_metrics_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    """As the router's metrics server (controller-runtime's certificate watcher): cert-manager
    rewrites the Secret's pair and the next handshakes get it. Loaded once, the port kept serving
    the old certificate until it expired (every scrape then failing)."""
    second = Authority()
    (tmp_path / "second-ca.crt").write_bytes(second.certificate_pem)
    picker = await mutual_tls_picker(tmp_path, Authority())
    url = f"https://localhost:{picker.metrics_server.port}/metrics"

    async def scraped(ca: str) -> bool:
        trust = ssl.create_default_context(cafile=tmp_path / ca)
        trust.load_cert_chain(tmp_path / "client" / "tls.crt", tmp_path / "client" / "tls.key")
        async with httpx.AsyncClient(verify=trust) as client:
            try:
                return (await client.get(url)).status_code == 200
            except httpx.HTTPError:
                return False

    try:
        assert await scraped("ca.crt")
        write_pair(tmp_path / "certs", second.issue("epp", ("localhost",)))
        for _ in range(100):
            if await scraped("second-ca.crt"):
                break
            await asyncio.sleep(0.1)
        assert await scraped("second-ca.crt")
        assert not await scraped("ca.crt")
    finally:
        await picker.stop()
