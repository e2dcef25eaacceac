"""GIE's `epp` flags that a drop-in must accept because GIE's Helm chart and manifests pass them.

Logging flags map onto Python logging (`-v`, `--zap-log-level`, `--zap-encoder json`); the
model-server metrics flags (`--total-queued-requests-metric`, `--model-server-metrics-path`, ...)
override the data layer's settings (epp/datalayer/overrides.py); flags for features this EPP does
not have (tracing, pprof, metrics auth, leader election, certificate reload) are accepted, and
enabling one logs a warning instead of failing the pod at startup.

The chart writes some values with literal quotes (`--total-queued-requests-metric="sglang:num_queue_reqs"`
arrives as `"sglang:num_queue_reqs"`, quotes included, since no shell is involved): string values
lose one pair of surrounding quotes."""

from __future__ import annotations

import argparse
import json
import logging
import time

from epp.datalayer.overrides import METRIC_FLAGS, ScrapeOverrides
from epp.datalayer.promtext import MetricSpec
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
    "metrics_endpoint_auth": "metrics endpoint authentication (put /metrics behind a NetworkPolicy)",
    "ha_enable_leader_election": "leader election (run one replica)",
    "enable_cert_reload": "certificate reload (restart to pick up a rotated certificate)",
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


_METRIC_HELP = {
    "waiting": "the queued-requests gauge",
    "running": "the running-requests gauge",
    "kv_usage": "the KV-cache usage gauge (0..1)",
    "lora": "the LoRA info gauge (vLLM's labels)",
    "cache_info": "the cache-config info gauge (block_size and num_gpu_blocks labels, or the engine's)",
}


def unquote(value: str) -> str:
    """`value` without one pair of matching surrounding quotes (`"x"` or `'x'`)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _metric_spec(value: str) -> str:
    spec = unquote(value).strip()
    if spec:
        try:
            MetricSpec.parse(spec)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def _scheme(value: str) -> str:
    scheme = unquote(value)
    if scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{value!r}: it can only be http or https")
    return scheme


def _path(value: str) -> str:
    path = unquote(value)
    if not path.startswith("/"):
        raise argparse.ArgumentTypeError(f"{value!r}: a URL path starts with /")
    return path


def _port(value: str) -> int:
    try:
        port = int(unquote(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number")
    return port


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model-server metrics (GIE's flags; each one given overrides the config's data layer)",
        "Metric specs are GIE's `name{label=value,...}`; an empty spec means the engine does not "
        "publish that metric. The metric names replace those the default engine "
        "(core-metrics-extractor defaultEngine, vllm unless configured) is read with.",
    )
    for name, flag in METRIC_FLAGS.items():
        group.add_argument(
            flag,
            dest=f"metric_{name}",
            type=_metric_spec,
            metavar="SPEC",
            default=None,
            help=_METRIC_HELP[name],
        )
    group.add_argument(
        "--model-server-metrics-scheme", type=_scheme, metavar="http|https", help="scrape with http or https"
    )
    group.add_argument(
        "--model-server-metrics-path", type=_path, metavar="PATH", help="URL path of the metrics page"
    )
    group.add_argument(
        "--model-server-metrics-https-insecure-skip-verify",
        type=parse_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="do not verify model servers' certificates with https (GIE's default: true)",
    )
    group.add_argument(
        "--model-server-metrics-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="scrape this port instead of the serving port, for pools with one target port "
        "(as GIE; ignored with several) and standalone endpoints without their own metricsPort; 0 = the "
        "serving port",
    )


def scrape_overrides(args: argparse.Namespace) -> ScrapeOverrides:
    specs = {name: getattr(args, f"metric_{name}") for name in METRIC_FLAGS}
    return ScrapeOverrides(
        scheme=args.model_server_metrics_scheme,
        path=args.model_server_metrics_path,
        insecure_skip_verify=args.model_server_metrics_https_insecure_skip_verify,
        metric_specs={name: spec for name, spec in specs.items() if spec is not None},
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
