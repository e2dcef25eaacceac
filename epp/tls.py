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
change runs on the event loop and does its file reads in a worker thread.

Beyond GIE: --client-ca-path makes it mutual TLS, refusing any client without a certificate from
that CA, so only the gateway can ask for routing decisions (or learn the pool from them).
`Authority` issues such a CA and its certificates (what `epp run` uses)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from epp.tasks import cancel_and_wait

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
    client_ca_path: Path | None = None  # set: mutual TLS, clients must present a certificate from it


def parse_bool(value: str) -> bool:
    """Go flag syntax (`--secure-serving=false`), which GIE's manifests and docs use."""
    lowered = value.strip().lower()
    if lowered in ("1", "t", "true", "yes"):
        return True
    if lowered in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (ext_proc port; the metrics port: --metrics-cert-dir)")
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
    group.add_argument(
        "--tls-min-version",
        metavar="VERSION",
        help="llm-d router: VersionTLS10 to VersionTLS12 hold (gRPC serves TLS 1.2 and 1.3); "
        "VersionTLS13 is refused, as gRPC cannot be limited to it",
    )
    group.add_argument(
        "--tls-cipher-suites",
        action="append",
        metavar="NAMES",
        help="llm-d router: Go cipher suite names, comma-separated or repeated; held when they include "
        "gRPC's four ECDHE AES-GCM suites for TLS 1.2, refused otherwise (its suites cannot be narrowed)",
    )
    group.add_argument(
        "--client-ca-path",
        type=Path,
        metavar="FILE",
        help="PEM file of the CA(s) whose client certificates the ext_proc port accepts: mutual TLS, "
        "a client without such a certificate is refused (default: any client; GIE has no such option)",
    )


# llm-d router v0.10's --tls-min-version values (Go's crypto/tls constant names).
TLS_VERSIONS = ("VersionTLS10", "VersionTLS11", "VersionTLS12", "VersionTLS13")
# Go's crypto/tls cipher suite names (CipherSuites and InsecureCipherSuites), which
# --tls-cipher-suites takes; the first three are TLS 1.3's, which Go does not let it limit.
GO_CIPHER_SUITES = frozenset(
    {
        *("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"),
        *("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
        *("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
        *("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
        *("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
        *("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
        *("TLS_RSA_WITH_RC4_128_SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_RSA_WITH_AES_128_CBC_SHA"),
        *("TLS_RSA_WITH_AES_256_CBC_SHA", "TLS_RSA_WITH_AES_128_CBC_SHA256"),
        *("TLS_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_256_GCM_SHA384"),
        *("TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "TLS_ECDHE_RSA_WITH_RC4_128_SHA"),
        *("TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    }
)
# What gRPC's own TLS (grpc.aio, 1.85) offers for TLS 1.2, in Go's names: it serves 1.2 and 1.3
# and its suites cannot be chosen per server, so a --tls-cipher-suites list holds only if it
# allows all of these.
GRPC_TLS12_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
)


def check_tls_policy(min_version: str | None, cipher_suites: list[str] | None) -> None:
    """llm-d's --tls-min-version and --tls-cipher-suites hold for the ext_proc port only if
    gRPC's TLS already keeps to them (it serves TLS 1.2 and 1.3 with GRPC_TLS12_SUITES), which
    cannot be narrowed here; a policy it would break is refused rather than ignored."""
    if min_version is not None and min_version.strip():
        version = min_version.strip()
        if version not in TLS_VERSIONS:
            supported = ", ".join(TLS_VERSIONS)
            raise ValueError(
                f"--tls-min-version: unknown TLS version {version!r}; supported values: {supported}"
            )
        if version == "VersionTLS13":
            raise ValueError(
                "--tls-min-version=VersionTLS13: gRPC's TLS here serves TLS 1.2 and 1.3 and cannot be "
                "limited to 1.3; leave the flag unset or VersionTLS12, or require TLS 1.3 at the gateway"
            )
    names = [name.strip() for value in cipher_suites or () for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in GO_CIPHER_SUITES]
    if unknown:
        raise ValueError(f"--tls-cipher-suites: unknown cipher suite {unknown[0]!r} (Go's crypto/tls names)")
    missing = [suite for suite in GRPC_TLS12_SUITES if names and suite not in names]
    if missing:
        raise ValueError(
            f"--tls-cipher-suites leaves out {', '.join(missing)}, which gRPC's TLS here offers for TLS "
            "1.2 and cannot drop; allow them too, or leave the flag unset"
        )


def options_from_args(args: argparse.Namespace) -> TlsOptions:
    if args.secure_serving:
        check_tls_policy(args.tls_min_version, args.tls_cipher_suites)
    if args.cert_path is not None and not args.secure_serving:
        raise ValueError("--cert-path needs --secure-serving")
    if args.client_ca_path is not None and not args.secure_serving:
        raise ValueError("--client-ca-path needs --secure-serving")
    if args.enable_cert_reload and args.cert_path is None:
        log.warning("--enable-cert-reload without --cert-path: nothing to reload (as GIE, ignored)")
    return TlsOptions(
        secure_serving=args.secure_serving,
        cert_path=args.cert_path,
        reload=args.enable_cert_reload and args.cert_path is not None,
        client_ca_path=args.client_ca_path,
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
        self._client_ca: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials | None:
        """None for plaintext. Reads the files (startup, before the loop serves anything)."""
        options = self.options
        if not options.secure_serving:
            return None
        if options.client_ca_path is not None:
            self._client_ca = options.client_ca_path.read_bytes()
            log.info("ext_proc mutual TLS: clients need a certificate from %s", options.client_ca_path)
        if options.cert_path is None:
            key_pem, cert_pem = self_signed_certificate()
            log.info("ext_proc TLS with a self-signed certificate (no --cert-path)")
            return self._static([(key_pem, cert_pem)])
        self._stamp = _stamp(options.cert_path)
        key_pem, cert_pem = load_pair(options.cert_path)
        self.loads = 1
        if not options.reload:
            log.info("ext_proc TLS with the certificate in %s", options.cert_path)
            return self._static([(key_pem, cert_pem)])
        log.info("ext_proc TLS with the certificate in %s, reloaded when it changes", options.cert_path)
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(key_pem, cert_pem),
            self._fetch,
            require_client_authentication=self._client_ca is not None,
        )

    def _static(self, pairs: list[tuple[bytes, bytes]]) -> grpc.ServerCredentials:
        if self._client_ca is None:
            return grpc.ssl_server_credentials(pairs)
        return grpc.ssl_server_credentials(pairs, root_certificates=self._client_ca, require_client_auth=True)

    def _configuration(self, key_pem: bytes, cert_pem: bytes) -> grpc.ServerCertificateConfiguration:
        """A reloadable pair, with the client CA when clients must present a certificate."""
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, cert_pem)], root_certificates=self._client_ca
        )

    async def start(self) -> None:
        if self.options.reload and self.options.cert_path is not None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._watch(self.options.cert_path), name="cert-reload")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

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
            configuration = self._configuration(key_pem, cert_pem)
            with self._lock:
                self._pending = configuration
            self.loads += 1
            log.info("ext_proc certificate reloaded from %s", directory)


class ReloadedPair:
    """A server SSLContext's pair from a certificate directory (a mounted Kubernetes TLS Secret),
    loaded into the same context again when its files change, so new handshakes get a rotated
    certificate without a restart (as controller-runtime's certificate watcher). A pair that does
    not load is tried on a scratch context first and leaves the previous one in place."""

    def __init__(self, context: ssl.SSLContext, directory: Path, poll_interval: float = RELOAD_POLL_INTERVAL):
        self.context = context
        self.directory = directory
        self._poll_interval = poll_interval
        self._stamp: tuple[tuple[int, int, int], ...] = ()
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Load the pair now (blocking: before the loop serves, or in a thread). The stamp moves
        only after a good load: a half-written pair is tried again once its files change."""
        stamp = _stamp(self.directory)
        pair = (self.directory / CERT_FILE, self.directory / KEY_FILE)
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(*pair)
        self.context.load_cert_chain(*pair)
        self._stamp = stamp

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="cert-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _watch(self) -> None:
        # What the last failure was about (the files' stamp, else the error): a pair left broken is
        # reported once, then tried again only when its files change, as the ext_proc port's is.
        failed: object = None
        while True:
            await asyncio.sleep(self._poll_interval)
            stamp: object = None
            try:
                stamp = await asyncio.to_thread(_stamp, self.directory)
                if stamp in (self._stamp, failed):
                    continue
                await asyncio.to_thread(self.load)
            except (OSError, ssl.SSLError) as exc:
                about = str(exc) if stamp is None else stamp
                if about != failed:
                    log.error("keeping the previous TLS certificate: %s", exc)
                failed = about
                continue
            failed = None
            log.info("TLS certificate reloaded from %s", self.directory)


def server_credentials(options: TlsOptions) -> grpc.ServerCredentials | None:
    """None for plaintext. Read once: for reloading, use a started ServingCertificate."""
    return ServingCertificate(options).credentials()


class Authority:
    """A certificate authority made in memory (ECDSA P-256) that issues server and client
    certificates: for `epp run` and tests, where no PKI exists."""

    def __init__(
        self, common_name: str = "epp-run-ca", validity: datetime.timedelta = SELF_SIGNED_VALIDITY
    ) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._validity = validity
        self.certificate = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )  # fmt: skip

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + self._validity)
        )

    def issue(
        self, common_name: str, dns_names: tuple[str, ...] = (), client: bool = False
    ) -> tuple[bytes, bytes]:
        """(private key PEM, certificate PEM) for a server (`dns_names` its SANs) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = self._builder(subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return key_pem, certificate.public_bytes(serialization.Encoding.PEM)
