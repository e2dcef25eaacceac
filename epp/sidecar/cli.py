"""Run the P/D routing sidecar in front of a decode engine (llm-d's pd-sidecar). Requests carrying
`x-prefiller-host-port` on an inference API get their prefill done by that prefiller first, then
decode on the local engine; everything else is proxied to the local engine unchanged."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from epp import eventloop, zapflags
from epp.discovery.k8s.model import GROUP_V1, POOL_VERSIONS, PoolRef
from epp.params.duration import parse_duration
from epp.sidecar.connectors import Connector
from epp.sidecar.options import DEFAULT_SGLANG_BOOTSTRAP_PORT, SidecarOptions
from epp.sidecar.prefill import RetryPolicy
from epp.sidecar.server import ConfigError, Sidecar
from epp.sidecar.upstream import Stage, StageTls
from epp.signals import stop_event
from epp.tls import parse_bool

log = logging.getLogger(__name__)

DEFAULT_MODEL_SERVER_PORT = 8200
MAX_PORT = 65535
# llm-d's sidecar binds controller-runtime's zap flags onto a logger whose encoder is fixed: JSON
# with zap's production encoder config (`ts` in epoch seconds), so --zap-encoder and
# --zap-time-encoding parse but change nothing there, nor here.
_ZAP_HELP = {
    "zap-log-level": "debug, info, error, panic or a verbosity N (default info); debug is verbosity 1, "
    "as in llm-d, which logs nothing more than info: the per-request debug lines need 4",
    "zap-devel": "development mode (default false, as llm-d's sidecar): stack traces from warnings "
    "up rather than errors; the level is then debug (verbosity 1)",
    "zap-encoder": "accepted and ignored, as by llm-d's sidecar: it always logs JSON lines",
    "zap-stacktrace-level": "records at or above this level carry the call stack (default error; "
    "warn with --zap-devel)",
    "zap-time-encoding": "accepted and ignored, as by llm-d's sidecar: `ts` is always epoch seconds",
}
_JSON_TIME = "epoch"


def _add_switch(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    default: bool | None,
    help_text: str,
    default_text: str | None = None,
) -> None:
    """`--NAME`, `--NAME=BOOL` (Go flag syntax, so llm-d manifests' `--secure-proxy=false` work
    unchanged) and `--no-NAME`. A None default means "not given" (`default_text` says what then)."""
    dest = name.replace("-", "_")
    parser.add_argument(
        f"--{name}",
        dest=dest,
        nargs="?",
        const=True,
        default=default,
        type=parse_bool,
        metavar="BOOL",
        help=f"{help_text} (default {default_text or str(default).lower()})",
    )
    parser.add_argument(f"--no-{name}", dest=dest, action="store_false", help=argparse.SUPPRESS)


def _stages(values: list[str]) -> frozenset[Stage]:
    names = {item.strip() for value in values for item in value.split(",") if item.strip()}
    unknown = names - {stage.value for stage in Stage}
    if unknown:
        raise ConfigError(f"unknown TLS stage(s) {sorted(unknown)}: use prefiller and/or decoder")
    return frozenset(Stage(name) for name in names)


def _deprecated_stages(args: argparse.Namespace, suffix: str, replacement: str) -> frozenset[Stage]:
    """The stages llm-d's removed `--<stage>-use-tls` / `--<stage>-tls-insecure-skip-verify`
    switches turn on, with a warning naming the flag that replaces them."""
    stages = frozenset(stage for stage in Stage if getattr(args, f"{stage}_{suffix}"))
    for stage in sorted(stages):
        log.warning("--%s-%s is deprecated: use %s=%s", stage, suffix.replace("_", "-"), replacement, stage)
    return stages


def _in_range(flag: str, value: int, low: int, high: int | None = None) -> int:
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{flag} must be {bounds}, got {value}")
    return value


def _seconds(flag: str, text: str) -> float:
    """A Go duration of zero or more (a negative one would crash later)."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    if value < 0:
        raise ConfigError(f"{flag} must be a duration of 0 or more, got {text!r}")
    return value


def _ssrf_protection(args: argparse.Namespace) -> bool:
    """As given; else off, as llm-d's default, except that an endpoints file (ours, not llm-d's)
    is only ever given to be the allowlist."""
    if args.enable_ssrf_protection is not None:
        return bool(args.enable_ssrf_protection)
    return args.endpoints_file is not None


def _pool_ref(args: argparse.Namespace) -> PoolRef | None:
    """llm-d's resolution: --inference-pool (or INFERENCE_POOL) as NAMESPACE/NAME or NAME in
    `default`; else the deprecated separate name and namespace, which must then both be given."""
    text = args.inference_pool
    if text:
        if text.count("/") > 1:
            raise ConfigError(f"--inference-pool must be 'namespace/name' or 'name', not {text!r}")
        namespace, _, name = text.rpartition("/") if "/" in text else ("default", "", text)
        if not namespace or not name:
            raise ConfigError(f"--inference-pool cannot have an empty namespace or name: {text!r}")
        return PoolRef(name, namespace, args.pool_group)
    name, namespace = args.inference_pool_name, args.inference_pool_namespace
    if name is None and namespace is None:
        return None
    log.warning("--inference-pool-name and --inference-pool-namespace are deprecated: use --inference-pool")
    if not name or not namespace:
        raise ConfigError(
            "--inference-pool-name and --inference-pool-namespace go together (or use --inference-pool)"
        )
    return PoolRef(name, namespace, args.pool_group)


def _add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "logging", "JSON lines on stderr (ts, level, logger, msg, stacktrace), as llm-d's sidecar writes them"
    )
    zapflags.add_arguments(group, development=False, time_encoding=None, helps=_ZAP_HELP)


def configure_logging(args: argparse.Namespace) -> None:
    """llm-d's sidecar logger: JSON always; the level if given (else --log-level's, info by
    default); stacks from errors up, or from warnings up in development mode."""
    if args.zap_stacktrace_level is not None:
        stack_level = zapflags.STACK_LEVELS[args.zap_stacktrace_level]
    else:
        stack_level = logging.WARNING if args.zap_devel else logging.ERROR
    zapflags.configure(level=args.zap_log_level, json_time=_JSON_TIME, stack_level=stack_level)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, default=8000, help="listen port: the pool's target port (default 8000)"
    )
    parser.add_argument(
        "--model-server-port",
        type=int,
        default=None,
        help=f"local engine port (default {DEFAULT_MODEL_SERVER_PORT})",
    )
    parser.add_argument("--vllm-port", type=int, default=None, help="deprecated alias of --model-server-port")
    parser.add_argument(
        "--model-server-host", default="127.0.0.1", help="local engine address (default 127.0.0.1)"
    )
    parser.add_argument(
        "--kv-connector",
        "--connector",
        choices=[c.value for c in Connector],
        default=Connector.NIXLV2.value,
        help="how prefill hands the KV cache to decode (default nixlv2; nixl is the legacy v1 flat form)",
    )
    parser.add_argument(
        "--mooncake-bootstrap-port",
        type=int,
        metavar="PORT",
        help="llm-d's, read only by its mooncake connector, which this sidecar does not have; checked "
        "(1..65535) and otherwise unused, as in llm-d with any other connector: its P/D manifests "
        "pass it whatever the connector",
    )
    _add_switch(
        parser,
        "enable-prefiller-sampling",
        parse_bool(os.environ.get("ENABLE_PREFILLER_SAMPLING", "false")),
        "pick a random prefiller when the header lists several (env ENABLE_PREFILLER_SAMPLING)",
    )
    ssrf = parser.add_argument_group(
        "SSRF protection",
        "Only call prefillers that are current endpoints of the pool, host AND port: the Ready pods "
        "of --inference-pool (watched through the Kubernetes API) or the entries of --endpoints-file.",
    )
    _add_switch(
        ssrf,
        "enable-ssrf-protection",
        None,
        "refuse prefill targets outside the pool (403)",
        "false, as in llm-d; true when --endpoints-file is given",
    )
    ssrf.add_argument(
        "--inference-pool",
        default=os.environ.get("INFERENCE_POOL") or None,
        metavar="[NAMESPACE/]NAME",
        help="the InferencePool whose Ready pods may be prefill targets; a bare NAME is in namespace "
        "'default' (env INFERENCE_POOL)",
    )
    ssrf.add_argument(
        "--pool-group",
        default=GROUP_V1,
        choices=sorted(POOL_VERSIONS),
        help=f"the pool's API group: {GROUP_V1} (v1, default) or the deprecated v1alpha2 group",
    )
    for flag, env in (("name", "INFERENCE_POOL_NAME"), ("namespace", "INFERENCE_POOL_NAMESPACE")):
        ssrf.add_argument(
            f"--inference-pool-{flag}",
            default=os.environ.get(env) or None,
            help=f"deprecated (llm-d removed it): use --inference-pool (env {env})",
        )
    ssrf.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig file (default: the pod's service account, else $KUBECONFIG or ~/.kube/config)",
    )
    ssrf.add_argument(
        "--endpoints-file",
        type=Path,
        help="without Kubernetes: the EPP's endpoint file, whose entries are the allowed prefill targets",
    )
    prefill = parser.add_argument_group("prefill leg")
    prefill.add_argument(
        "--prefill-timeout",
        default="60s",
        help="bound on each prefill attempt, then 504 (0 = none; default 60s)",
    )
    prefill.add_argument(
        "--prefill-max-retries",
        type=int,
        default=0,
        help="retries on 502/503/504 and connection errors (default 0)",
    )
    prefill.add_argument(
        "--prefill-retry-backoff",
        default="200ms",
        help="first retry delay, doubled each retry (default 200ms)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument(
        "--enable-tls",
        action="append",
        default=[],
        metavar="STAGES",
        help="use https to these upstreams: prefiller,decoder (repeatable)",
    )
    tls.add_argument(
        "--tls-insecure-skip-verify",
        action="append",
        default=[],
        metavar="STAGES",
        help="don't verify these upstreams' certificates: prefiller,decoder (repeatable)",
    )
    for stage in Stage:  # llm-d's per-stage switches, still in older charts (KServe's, for one)
        _add_switch(tls, f"{stage}-use-tls", False, f"deprecated: --enable-tls={stage}")
        _add_switch(
            tls, f"{stage}-tls-insecure-skip-verify", False, f"deprecated: --tls-insecure-skip-verify={stage}"
        )
    _add_switch(tls, "secure-proxy", False, "serve HTTPS (llm-d defaults to true; see docs/sidecar.md)")
    tls.add_argument(
        "--cert-path", type=Path, help="directory with tls.crt and tls.key (default: self-signed)"
    )
    parser.add_argument(
        "--data-parallel-size", type=int, default=1, help="only 1 is supported: run one sidecar per rank"
    )
    _add_switch(parser, "access-log", False, "log every request")
    parser.add_argument(
        "--shutdown-timeout",
        default="60s",
        help="on SIGTERM, how long in-flight requests may finish (default 60s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="largest P/D request body the sidecar reads, else 413 (default 64 MiB)",
    )
    parser.add_argument("--ready-file", type=Path, help="once serving, write the bound port here as JSON")
    eventloop.add_argument(parser)
    _add_logging_arguments(parser)


def options_from_args(args: argparse.Namespace) -> SidecarOptions:
    if args.data_parallel_size < 1:  # llm-d's check and message
        raise ConfigError(f"--data-parallel-size must be a positive integer, got {args.data_parallel_size}")
    if args.data_parallel_size != 1:
        raise ConfigError("--data-parallel-size > 1 is not supported: run one sidecar per data-parallel rank")
    if args.vllm_port is not None:
        log.warning("--vllm-port is deprecated: use --model-server-port")
    for flag, port in (
        ("--model-server-port", args.model_server_port),
        ("--vllm-port", args.vllm_port),
        ("--mooncake-bootstrap-port", args.mooncake_bootstrap_port),
    ):
        if port is not None:
            _in_range(flag, port, 1, MAX_PORT)
    tls_on, skip_verify = _stages(args.enable_tls), _stages(args.tls_insecure_skip_verify)
    tls_on |= _deprecated_stages(args, "use_tls", "--enable-tls")
    skip_verify |= _deprecated_stages(args, "tls_insecure_skip_verify", "--tls-insecure-skip-verify")
    return SidecarOptions(
        host=args.host,
        port=_in_range("--port", args.port, 0, MAX_PORT),
        model_server_host=args.model_server_host,
        model_server_port=args.model_server_port or args.vllm_port or DEFAULT_MODEL_SERVER_PORT,
        connector=Connector(args.kv_connector),
        prefiller_sampling=args.enable_prefiller_sampling,
        ssrf_protection=_ssrf_protection(args),
        pool=_pool_ref(args),
        kubeconfig=args.kubeconfig,
        endpoints_file=args.endpoints_file,
        prefill=RetryPolicy(
            timeout=_seconds("--prefill-timeout", args.prefill_timeout),
            max_retries=_in_range("--prefill-max-retries", args.prefill_max_retries, 0),
            backoff=_seconds("--prefill-retry-backoff", args.prefill_retry_backoff),
        ),
        prefiller_tls=StageTls(Stage.PREFILLER in tls_on, Stage.PREFILLER in skip_verify),
        decoder_tls=StageTls(Stage.DECODER in tls_on, Stage.DECODER in skip_verify),
        secure_proxy=args.secure_proxy,
        cert_path=args.cert_path,
        sglang_bootstrap_port=int(os.environ.get("SGLANG_BOOTSTRAP_PORT", DEFAULT_SGLANG_BOOTSTRAP_PORT)),
        access_log=args.access_log,
        shutdown_timeout=_seconds("--shutdown-timeout", args.shutdown_timeout),
        max_body_bytes=_in_range("--max-body-bytes", args.max_body_bytes, 1),
        ready_file=args.ready_file,
    )


async def serve_until_signalled(sidecar: Sidecar) -> None:
    stop = stop_event()
    await sidecar.start()
    try:
        await stop.wait()
        log.info("stopping: draining in-flight requests")
    finally:
        await sidecar.stop()


def run(args: argparse.Namespace) -> int:
    configure_logging(args)
    try:
        sidecar = Sidecar(options_from_args(args))
        eventloop.run(serve_until_signalled(sidecar), args.event_loop)
    except (ValueError, OSError) as exc:  # ConfigError and DiscoveryError are ValueErrors
        log.error("%s", exc)
        return 2
    return 0
