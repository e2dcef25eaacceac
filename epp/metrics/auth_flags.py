"""The flag that puts /metrics behind Kubernetes authentication (`--metrics-endpoint-auth`), apart
from `epp.metrics.auth`, which needs the Kubernetes client library (slow to import) and is imported
only when the flag is on."""

from __future__ import annotations

import argparse

from epp.tls import parse_bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-endpoint-auth",
        type=parse_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="serve /metrics only to bearer tokens a TokenReview accepts whose user a "
        "SubjectAccessReview allows `get` on /metrics (GIE's default: on with --pool-name; off for "
        "standalone endpoints, where there is no API server, unless asked for)",
    )


def enabled_from_args(args: argparse.Namespace, in_cluster: bool) -> bool:
    """GIE's default is true, and GIE always runs against an API server; a standalone EPP here
    has none unless one is configured, so the default follows --pool-name."""
    if args.metrics_endpoint_auth is None:
        return in_cluster
    return bool(args.metrics_endpoint_auth)
