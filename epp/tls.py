"""TLS for the ext_proc port, as GIE's EPP serves it: on by default (--secure-serving), with the
certificate from --cert-path (tls.crt/tls.key, e.g. a mounted Secret) or else a self-signed one
made in memory at startup. Gateways connect with verification off (Istio's DestinationRule
`insecureSkipVerify`, Envoy Gateway's TLS without a CA), so the self-signed certificate only needs
to encrypt; nothing is ever written to disk, which keeps the root filesystem read-only."""

from __future__ import annotations

import argparse
import datetime
import logging
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


@dataclass(frozen=True)
class TlsOptions:
    secure_serving: bool = True
    cert_path: Path | None = None


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


def options_from_args(args: argparse.Namespace) -> TlsOptions:
    if args.cert_path is not None and not args.secure_serving:
        raise ValueError("--cert-path needs --secure-serving")
    return TlsOptions(secure_serving=args.secure_serving, cert_path=args.cert_path)


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


def server_credentials(options: TlsOptions) -> grpc.ServerCredentials | None:
    """None for plaintext. Read once at startup: a rotated Secret takes a pod restart."""
    if not options.secure_serving:
        return None
    if options.cert_path is not None:
        key_pem = (options.cert_path / KEY_FILE).read_bytes()
        cert_pem = (options.cert_path / CERT_FILE).read_bytes()
        log.info("ext_proc TLS with the certificate in %s", options.cert_path)
    else:
        key_pem, cert_pem = self_signed_certificate()
        log.info("ext_proc TLS with a self-signed certificate (no --cert-path)")
    return grpc.ssl_server_credentials([(key_pem, cert_pem)])
