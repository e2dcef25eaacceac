"""TLS on the metrics port, llm-d router v0.10's way: `--metrics-cert-dir` (tls.crt and tls.key)
turns it on, TLS 1.2 at least; `--metrics-client-ca-file` also requires every client to present
a certificate from that CA. As in the router, a client CA needs the certificate directory, and TLS
without either a client CA or `--metrics-endpoint-auth` is refused (anyone could read it)."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from epp.tls import CERT_FILE, KEY_FILE, ReloadedPair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-cert-dir",
        type=Path,
        metavar="DIR",
        help=f"llm-d router: serve the metrics port over TLS with {CERT_FILE} and {KEY_FILE} from DIR",
    )
    parser.add_argument(
        "--metrics-client-ca-file",
        type=Path,
        metavar="FILE",
        help="llm-d router: PEM CA(s) whose client certificates the metrics port requires (mutual TLS)",
    )


def context_from_args(args: argparse.Namespace, endpoint_auth: bool) -> ReloadedPair | None:
    """The metrics server's TLS context with its pair (reloaded when the files change once
    started), or None for plaintext; ValueError names what is wrong."""
    cert_dir: Path | None = args.metrics_cert_dir
    client_ca: Path | None = args.metrics_client_ca_file
    if cert_dir is None:
        if client_ca is not None:
            raise ValueError("--metrics-client-ca-file requires --metrics-cert-dir")
        return None
    if client_ca is None and not endpoint_auth:
        raise ValueError(
            "--metrics-cert-dir enables metrics TLS without authentication; set --metrics-client-ca-file "
            "or --metrics-endpoint-auth"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    pair = ReloadedPair(context, cert_dir)
    try:
        pair.load()
    except (OSError, ssl.SSLError) as exc:
        what = f"--metrics-cert-dir {cert_dir}: cannot load {CERT_FILE} and {KEY_FILE}"
        raise ValueError(f"{what}: {exc}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            what = f"--metrics-client-ca-file {client_ca}: no CA certificate loaded"
            raise ValueError(f"{what}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return pair
