"""TLS for the sidecar's listener (`--secure-proxy`) and for its upstream legs (`--enable-tls`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


def client_context(skip_verify: bool) -> ssl.SSLContext:
    """TLS >= 1.2 with the system trust store; `skip_verify` for self-signed engine certificates."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _self_signed_pem() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "epp-sidecar")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _load_self_signed(context: ssl.SSLContext) -> None:
    """`load_cert_chain` only reads files: write the pair to a private temporary directory."""
    cert_pem, key_pem = _self_signed_pem()
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, CERT_FILE), Path(directory, KEY_FILE)
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)


def _stamp(directory: Path) -> tuple[float, ...]:
    return tuple(os.stat(directory / name).st_mtime for name in (CERT_FILE, KEY_FILE))


class ServerTls:
    """The listener's SSLContext. With a certificate directory (a mounted Kubernetes TLS secret) the
    pair is reloaded into the same context when it changes, so rotation needs no restart; without
    one a self-signed certificate is generated at start."""

    def __init__(self, cert_dir: Path | None, poll_interval: float = 5.0) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._cert_dir = cert_dir
        self._poll_interval = poll_interval
        self._stamp: tuple[float, ...] = ()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._cert_dir is None:
            await asyncio.to_thread(_load_self_signed, self.context)
            log.info("serving TLS with a self-signed certificate")
            return
        await self._load(self._cert_dir)
        self._task = asyncio.get_running_loop().create_task(self._watch(self._cert_dir), name="cert-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _load(self, directory: Path) -> None:
        self._stamp = await asyncio.to_thread(_stamp, directory)
        await asyncio.to_thread(self.context.load_cert_chain, directory / CERT_FILE, directory / KEY_FILE)
        log.info("serving TLS with the certificate in %s", directory)

    async def _watch(self, directory: Path) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                if await asyncio.to_thread(_stamp, directory) != self._stamp:
                    await self._load(directory)
            except (OSError, ssl.SSLError) as exc:
                log.error("keeping the previous certificate: %s", exc)
