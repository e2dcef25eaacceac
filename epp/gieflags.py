"""GIE's `epp` flags that a drop-in must accept because GIE's Helm chart and manifests pass them.

Logging flags map onto Python logging (`-v`, `--zap-log-level`, `--zap-encoder json`); flags for
features this EPP does not have (tracing, pprof) are accepted, and enabling one logs a warning
instead of failing the pod at startup. (Leader election, certificate reload and metrics
authentication are implemented: epp.discovery.k8s.leader, epp.tls, epp.metrics.auth.)"""

from __future__ import annotations

import argparse
import json
import logging
import time

from epp.tls import parse_bool

# GIE's verbosity: 2 is the default (info), 3 verbose, 4 debug, 5 trace.
_VERBOSITY_DEBUG = 4
_ZAP_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "error": logging.ERROR,
    "panic": logging.CRITICAL,
}
UNSUPPORTED = {
    "tracing": "OpenTelemetry tracing",
    "enable_pprof": "pprof profiling",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "GIE compatibility (accepted so GIE's charts and manifests run unchanged)"
    )
    group.add_argument(
        "-v", "--v", type=int, default=2, metavar="N", help="verbosity: 2 info (default), 4+ debug"
    )
    group.add_argument("--zap-log-level", choices=sorted(_ZAP_LEVELS), help="log level (overrides -v)")
    group.add_argument("--zap-encoder", choices=("json", "console"), default="console", help="log format")
    for flag in ("--zap-devel", "--zap-stacktrace-level", "--zap-time-encoding"):
        group.add_argument(flag, default=None, help=argparse.SUPPRESS)
    for name in UNSUPPORTED:
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=parse_bool,
            nargs="?",
            const=True,
            default=None,
            metavar="BOOL",
            help="accepted; not implemented (asking for it logs a warning)",
        )


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, as GIE's `--zap-encoder json` writes them."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def apply(args: argparse.Namespace) -> None:
    """Configure logging from the GIE flags and warn about requested features we lack."""
    root = logging.getLogger()
    if args.zap_log_level:
        root.setLevel(_ZAP_LEVELS[args.zap_log_level])
    elif args.v >= _VERBOSITY_DEBUG:
        root.setLevel(logging.DEBUG)
    if args.zap_encoder == "json":
        for handler in root.handlers:
            handler.setFormatter(_JsonFormatter())
    for name, feature in UNSUPPORTED.items():
        if getattr(args, name):
            logging.getLogger(__name__).warning(
                "--%s: %s is not implemented", name.replace("_", "-"), feature
            )
