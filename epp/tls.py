"""TLS for the ext_proc port, as GIE's EPP serves it: on by default (--secure-serving), with the
certificate from --cert-path (tls.crt/tls.key, e.g. a mounted Secret) or else a self-signed one
made in memory at startup. Gateways connect with verification off (Istio's DestinationRule
`insecureSkipVerify`, Envoy Gateway's TLS without a CA), so the self-signed certificate only needs
to encrypt; nothing is ever written to disk, which keeps the root filesystem read-only.

Beyond GIE: --client-ca-path makes it mutual TLS, refusing any client without a certificate from
that CA, so only the gateway can ask for routing decisions (or learn the pool from them).
`Authority` issues such a CA and its certificates (what `epp run` uses)."""

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
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
SELF_SIGNED_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class TlsOptions:
    secure_serving: bool = True
    cert_path: Path | None = None
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
        "--client-ca-path",
        type=Path,
        metavar="FILE",
        help="PEM file of the CA(s) whose client certificates the ext_proc port accepts: mutual TLS, "
        "a client without such a certificate is refused (default: any client; GIE has no such option)",
    )


def options_from_args(args: argparse.Namespace) -> TlsOptions:
    if args.cert_path is not None and not args.secure_serving:
        raise ValueError("--cert-path needs --secure-serving")
    if args.client_ca_path is not None and not args.secure_serving:
        raise ValueError("--client-ca-path needs --secure-serving")
    return TlsOptions(
        secure_serving=args.secure_serving, cert_path=args.cert_path, client_ca_path=args.client_ca_path
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
    if options.client_ca_path is None:
        return grpc.ssl_server_credentials([(key_pem, cert_pem)])
    log.info("ext_proc mutual TLS: clients need a certificate from %s", options.client_ca_path)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=options.client_ca_path.read_bytes(),
        require_client_auth=True,
    )


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
