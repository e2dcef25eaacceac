"""GIE's `epp` flags that a drop-in must accept because GIE's Helm chart and manifests pass them.

Logging flags map onto Python logging (`-v`, `--zap-log-level`, `--zap-encoder json`,
`--zap-devel`, `--zap-stacktrace-level`, `--zap-time-encoding`); the model-server metrics flags
(`--total-queued-requests-metric`, `--model-server-metrics-path`, ...) override the data layer's
settings (epp/datalayer/overrides.py); `--enable-pprof=true` stops the EPP (there is no pprof in
Python: use py-spy). Leader election, certificate reload and metrics authentication are
implemented (epp.discovery.k8s.leader, epp.tls, epp.metrics.auth), and so is `--tracing`
(epp.observe.flags, epp.tracing).

The chart writes some values with literal quotes (`--total-queued-requests-metric="sglang:num_queue_reqs"`
arrives as `"sglang:num_queue_reqs"`, quotes included, since no shell is involved): string values
lose one pair of surrounding quotes."""

from __future__ import annotations

import argparse
import logging

from epp import zapflags
from epp.datalayer.overrides import METRIC_FLAGS, ScrapeOverrides
from epp.datalayer.promtext import MetricSpec
from epp.params.values import parse_quantity, unquote
from epp.tls import parse_bool

_ZAP_HELP = {
    "zap-log-level": "log level (overrides -v): debug is verbosity 1, as in GIE; debug lines need 4",
    "zap-encoder": "log format (default console; json with --zap-devel=false)",
    "zap-devel": "development logging, GIE's default: console lines unless --zap-encoder; false: JSON lines",
    "zap-stacktrace-level": "log records at or above this level carry the call stack (default: none)",
    "zap-time-encoding": "the `ts` of JSON log lines (default iso8601)",
}
# Flags GIE's charts pass for features this EPP lacks: accepted, and asking for one logs a warning.
UNSUPPORTED: dict[str, str] = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "GIE compatibility (accepted so GIE's charts and manifests run unchanged)"
    )
    group.add_argument(  # GIE's verbosity: 2 is the default (info), 3 verbose, 4 debug, 5 trace.
        "-v", "--v", type=int, default=2, metavar="N", help="verbosity: 2 info (default), 4+ debug"
    )
    zapflags.add_arguments(group, development=True, time_encoding="iso8601", helps=_ZAP_HELP)
    group.add_argument(
        "--enable-pprof",
        type=parse_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="refused when true: Go's pprof does not exist in this Python EPP (profile it with py-spy)",
    )
    _add_router_arguments(group)
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


def _add_router_arguments(group: argparse._ArgumentGroup) -> None:
    """The llm-d router's own `epp` flags (v0.10), which its chart passes from `router.epp.flags`."""
    group.add_argument(
        "--allow-experimental-plugins",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="llm-d router: allow its Alpha plugin types; without it they run with a warning "
        "(refused under --strict-config, as the router refuses them)",
    )
    group.add_argument(
        "--drain-timeout",
        metavar="DURATION",
        default="30s",
        help="llm-d router: on SIGTERM, keep serving ext_proc this long (NOT_SERVING, lease "
        "released) before --shutdown-grace starts (Go duration; default 30s, as the router's; 0s: none)",
    )
    group.add_argument(
        "--emit-endpoint-scores",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="llm-d router: put the primary profile's total per scored endpoint in the envoy.lb "
        "metadata, key x-gateway-destination-endpoint-scores ({host:port: total})",
    )
    group.add_argument(
        "--enable-grpc-stream-metrics",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="llm-d router: export llm_d_epp_extproc_streams_inflight, _stream_duration_seconds and "
        "_streams_total{code}",
    )
    for direction in ("recv", "send"):
        group.add_argument(
            f"--grpc-max-{direction}-msg-size",
            type=message_size,
            default=0,
            metavar="SIZE",
            help=f"llm-d router: largest ext_proc message to {'receive' if direction == 'recv' else 'send'} "
            "(10MiB, 25MB, bytes; default 0: 64MiB here, gRPC's 4MiB in the router)",
        )


def message_size(value: str) -> int:
    """The router's size flags: a Kubernetes quantity, with an optional trailing B (`25MB`, `10MiB`)."""
    text = value.strip()
    if len(text) > 1 and text[-1] in "Bb":
        text = text[:-1]
    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def refuse_unsupported(args: argparse.Namespace) -> None:
    """A flag asking for something this EPP cannot do stops it, saying what to use instead."""
    if args.enable_pprof:
        raise ValueError(
            "--enable-pprof=true: pprof is Go's profiler and this EPP is Python, so there are no "
            "/debug/pprof handlers; profile it with py-spy (py-spy top --pid PID, py-spy record) and "
            "leave --enable-pprof unset or false"
        )


_METRIC_HELP = {
    "waiting": "the queued-requests gauge",
    "running": "the running-requests gauge",
    "kv_usage": "the KV-cache usage gauge (0..1)",
    "lora": "the LoRA info gauge (vLLM's labels)",
    "cache_info": "the cache-config info gauge (block_size and num_gpu_blocks labels, or the engine's)",
}


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


def apply(args: argparse.Namespace) -> None:
    """Configure logging from the GIE flags and warn about requested features we lack."""
    level = args.zap_log_level
    if level is None and args.v >= zapflags.DEBUG_VERBOSITY:  # -v below 4 leaves --log-level alone
        level = logging.DEBUG
    encoder = args.zap_encoder or ("console" if args.zap_devel else "json")
    zapflags.configure(
        level=level,
        json_time=args.zap_time_encoding if encoder == "json" else None,
        stack_level=zapflags.STACK_LEVELS.get(args.zap_stacktrace_level or ""),
    )
    for name, feature in UNSUPPORTED.items():
        if getattr(args, name):
            logging.getLogger(__name__).warning(
                "--%s: %s is not implemented", name.replace("_", "-"), feature
            )
