"""TLS for the ext_proc port, as GIE's EPP serves it: on by default (--secure-serving), with the
certificate from --cert-path (tls.crt/tls.key, e.g. a mounted Secret) or else a self-signed one
made in memory at startup. Gateways connect with verification off (Istio's DestinationRule
`insecureSkipVerify`, Envoy Gateway's TLS without a CA), so the self-signed certificate only needs
to encrypt; nothing is ever written to disk, which keeps the root filesystem read-only.

With --enable-cert-reload the --cert-path pair is re-read when it changes, as GIE's EPP does
(it watches the directory and reloads after 250 ms of quiet): new connections get the new
certificate, open ones keep theirs, and a pair that does not load (half written, key and
certificate not matching) is logged and the previous one kept. gRPC asks for the certificate on
every handshake (`dynamic_ssl_server_credentials`), from its own threads; the poll that notices a
change runs on the event loop and does its file reads in a worker thread."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
SELF_SIGNED_VALIDITY = datetime.timedelta(days=3650)
RELOAD_POLL_INTERVAL = 1.0
RELOAD_DEBOUNCE = 0.25  # GIE's: a change must be quiet this long before it is loaded


@dataclass(frozen=True)
class TlsOptions:
    secure_serving: bool = True
    cert_path: Path | None = None
    reload: bool = False  # --enable-cert-reload: re-read cert_path when it changes
    reload_interval: float = RELOAD_POLL_INTERVAL


def parse_bool(value: str) -> bool:
    """Go flag syntax (`--secure-serving=false`), which GIE's manifests and docs use."""
    lowered = value.strip().lower()
    if lowered in ("1", "t", "true", "yes"):
        return True
    if lowered in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (ext_proc port only; health and metrics stay plaintext)")
    group.add_argument(
        "--secure-serving",
        type=parse_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="serve ext_proc over TLS (default true, as GIE; --secure-serving=false for plaintext)",
    )
    group.add_argument(
        "--cert-path",
        type=Path,
        metavar="DIR",
        help=f"directory with {CERT_FILE} and {KEY_FILE}; default: a self-signed certificate made at startup",
    )
    group.add_argument(
        "--enable-cert-reload",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="re-read the --cert-path pair when it changes (new connections get the new certificate; "
        "a pair that fails to load is logged and the previous one kept)",
    )


def options_from_args(args: argparse.Namespace) -> TlsOptions:
    if args.cert_path is not None and not args.secure_serving:
        raise ValueError("--cert-path needs --secure-serving")
    if args.enable_cert_reload and args.cert_path is None:
        log.warning("--enable-cert-reload without --cert-path: nothing to reload (as GIE, ignored)")
    return TlsOptions(
        secure_serving=args.secure_serving,
        cert_path=args.cert_path,
        reload=args.enable_cert_reload and args.cert_path is not None,
    )


def self_signed_certificate(common_name: str = "epp") -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM). ECDSA P-256: generated in well under a millisecond,
    where an RSA key would hold up startup."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def load_pair(directory: Path) -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM) from the directory, checked: both parse and the
    key is the certificate's. gRPC would only find out at the next handshake."""
    key_pem = (directory / KEY_FILE).read_bytes()
    cert_pem = (directory / CERT_FILE).read_bytes()
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{directory}: {exc}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise ValueError(f"{directory}: {KEY_FILE} is not the key of {CERT_FILE}")
    return key_pem, cert_pem


def _stamp(directory: Path) -> tuple[tuple[int, int, int], ...]:
    """Changes whenever either file is rewritten or (a Secret volume's symlink swap) replaced."""
    stats = (os.stat(directory / name) for name in (CERT_FILE, KEY_FILE))
    return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stats)


class ServingCertificate:
    """The ext_proc port's credentials; with `reload`, the certificate directory is polled and a
    changed pair handed to gRPC for the next handshakes."""

    def __init__(self, options: TlsOptions) -> None:
        self.options = options
        self.loads = 0  # pairs loaded from cert_path, the first included
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._stamp: tuple[tuple[int, int, int], ...] = ()
        self._task: asyncio.Task[None] | None = None

    def credentials(self) -> grpc.ServerCredentials | None:
        """None for plaintext. Reads the files (startup, before the loop serves anything)."""
        options = self.options
        if not options.secure_serving:
            return None
        if options.cert_path is None:
            key_pem, cert_pem = self_signed_certificate()
            log.info("ext_proc TLS with a self-signed certificate (no --cert-path)")
            return grpc.ssl_server_credentials([(key_pem, cert_pem)])
        self._stamp = _stamp(options.cert_path)
        key_pem, cert_pem = load_pair(options.cert_path)
        self.loads = 1
        if not options.reload:
            log.info("ext_proc TLS with the certificate in %s", options.cert_path)
            return grpc.ssl_server_credentials([(key_pem, cert_pem)])
        log.info("ext_proc TLS with the certificate in %s, reloaded when it changes", options.cert_path)
        initial = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)])
        return grpc.dynamic_ssl_server_credentials(initial, self._fetch)

    async def start(self) -> None:
        if self.options.reload and self.options.cert_path is not None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._watch(self.options.cert_path), name="cert-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake question, from its threads: a new configuration, or None to keep
        the current one."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    async def _watch(self, directory: Path) -> None:
        while True:
            await asyncio.sleep(self.options.reload_interval)
            try:
                stamp = await asyncio.to_thread(_stamp, directory)
                if stamp == self._stamp:
                    continue
                # Let the writer finish: load once the files have been quiet for the debounce.
                while True:
                    await asyncio.sleep(RELOAD_DEBOUNCE)
                    settled = await asyncio.to_thread(_stamp, directory)
                    if settled == stamp:
                        break
                    stamp = settled
                self._stamp = stamp  # a broken pair is reported once, not at every poll
                key_pem, cert_pem = await asyncio.to_thread(load_pair, directory)
            except (OSError, ValueError) as exc:
                log.error("ext_proc certificate not reloaded, keeping the previous one: %s", exc)
                continue
            configuration = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)])
            with self._lock:
                self._pending = configuration
            self.loads += 1
            log.info("ext_proc certificate reloaded from %s", directory)


def server_credentials(options: TlsOptions) -> grpc.ServerCredentials | None:
    """None for plaintext. Read once: for reloading, use a started ServingCertificate."""
    return ServingCertificate(options).credentials()
