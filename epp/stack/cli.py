"""Run Envoy + the EPP + simulated vLLM servers on 127.0.0.1 (free ports), wait until every part
is ready, print how to send requests, and keep running until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from epp import gieflags
from epp.config.objectives import load_objectives_file
from epp.params.flagtypes import number_in_range
from epp.signals import stop_event
from epp.stack.envoy import BODY_MODES, DEFAULT_ALLOWED_PATHS, FAILURE_MODES, EnvoyOptions, check_path_prefix
from epp.stack.processes import EnvoyDidNotSeeEpp, ProcessFailed, RestartBackoff
from epp.stack.stack import PREFILL, Stack, StackConfig

PD_SAMPLE_CONFIG = Path(__file__).parents[1] / "config" / "samples" / "sim-pd-epp-config.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sims", type=_count, default=4, help="simulated model servers (default 4)")
    parser.add_argument(
        "--pd",
        nargs=2,
        type=_count,
        metavar=("PREFILL", "DECODE"),
        help="a P/D pool instead: PREFILL prefill simulators and DECODE decode simulators, each decode one "
        "behind an `epp sidecar`; the EPP runs llm-d's sim-pd-epp-config unless --epp-arg names a config",
    )
    parser.add_argument(
        "--model", type=_model_name, default="sim-model", help="served model name (default sim-model)"
    )
    parser.add_argument(
        "--port",
        type=gieflags.port_number,
        default=0,
        help="gateway port (default: a free port); one another process listens on stops epp run",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("run"),
        help="logs and generated config (default ./run); an earlier run's logs are kept as *.log.1",
    )
    parser.add_argument(
        "--body-mode",
        choices=BODY_MODES,
        default="buffered",
        help="ext_proc body mode (default buffered; full-duplex is GIE's contract, see docs)",
    )
    parser.add_argument(
        "--failure-mode", choices=FAILURE_MODES, default="closed", help="what Envoy does when the EPP is down"
    )
    parser.add_argument(
        "--allow-path",
        action="append",
        default=[],
        type=_path_prefix,
        metavar="PREFIX",
        help="also route this path and the paths under it (repeatable; '/' routes every path). By default "
        f"the gateway routes only {', '.join(DEFAULT_ALLOWED_PATHS)}; any other path is Envoy's JSON 404",
    )
    parser.add_argument(
        "--sim-arg", action="append", default=[], help="extra `epp sim` argument (repeatable)"
    )
    parser.add_argument(
        "--epp-arg", action="append", default=[], help="extra `epp serve` argument (repeatable)"
    )
    parser.add_argument(
        "--workers",
        type=_count,
        default=1,
        help="EPP worker processes sharing its port, each a synced replica (`epp serve --workers`); "
        "Envoy opens two connections per worker (default 1)",
    )
    parser.add_argument(
        "--rate-limit",
        type=_rate,
        default=EnvoyOptions().rate_limit,
        metavar="REQUESTS_PER_SECOND",
        help="admit at most this many requests per second in Envoy before the EPP (0: no limit, the "
        "default): the excess is a JSON 429 with Retry-After and x-gateway-limit: rate, answered without "
        'the EPP; set it to the rate the EPP serves (docs/operations.md, "Limits and overload")',
    )
    parser.add_argument(
        "--adaptive-concurrency",
        action="store_true",
        help="cap requests in flight with Envoy's adaptive concurrency filter before the EPP: the excess is "
        "a JSON 429 with Retry-After and x-gateway-limit: concurrency, answered without the EPP "
        '(docs/operations.md, "Limits and overload")',
    )
    parser.add_argument(
        "--adaptive-concurrency-latency",
        type=_seconds,
        metavar="SECONDS",
        help="the same, with this latency target (p90 through the EPP and the model servers, e.g. 0.1) "
        "instead of the latency measured every 30 s at a concurrency of 3",
    )
    parser.add_argument(
        "--admission-control",
        type=_aggression,
        default=EnvoyOptions().admission_control_aggression,
        metavar="AGGRESSION",
        help="refuse in Envoy, before the EPP, the share of new requests that the EPP itself refused "
        "(429) over the last 2 s, sharpened by AGGRESSION (the share to the power 1/AGGRESSION; 0: off, "
        "the default): a JSON 429 with Retry-After and x-gateway-limit: admission",
    )
    parser.add_argument(
        "--quota-from-epp",
        action="store_true",
        help="refuse in Envoy, before the EPP, the excess of an overload at a rate the EPP assigns: "
        "Envoy's rate_limit_quota filter with a token bucket from the EPP's rate-limit quota service "
        "(epp serve --rate-limit-quota --queue-wait-target=50ms unless --epp-arg sets the target), no "
        "limit while the EPP keeps up; a JSON 429 with Retry-After and x-gateway-limit: quota. With "
        "--epp-arg=--objectives-file=FILE, each objective of FILE has a bucket of its own (the "
        "x-gateway-inference-objective header), served by priority, sheddable ones last. Off by "
        'default (docs/operations.md, "Limits and overload")',
    )
    add_resilience_arguments(parser)


def _aggression(value: str) -> float:
    try:
        aggression = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {value!r}") from None
    if not (aggression == 0 or 1 <= aggression <= 100):
        raise argparse.ArgumentTypeError(f"the aggression must be 0 (off) or 1 to 100, not {value!r}")
    return aggression


def _path_prefix(text: str) -> str:
    try:
        return check_path_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_name(value: str) -> str:
    """`--model ''` started a stack no request could use: the EPP answers a request naming no
    model 400 ("model not found in request body"), as GIE does."""
    if not value:
        raise argparse.ArgumentTypeError("the model name cannot be empty: requests must name a model")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {value!r}")
    return seconds


_rate = number_in_range(
    int,
    0,
    message="the rate limit must be 0 (none) or more, not {value}",
    not_a_number="expected whole requests per second, not {text!r}",
)
# A number of processes: `--sims 0` started a gateway with an empty pool and printed requests that
# could only get 503, and `--sims -3` the same.
_count = number_in_range(int, 1, message="expected at least 1, not {value}", name="_count")
_retries = number_in_range(
    int, 0, 10, message="retries must be between 0 and 10, not {value}", name="_retries"
)


def add_resilience_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EnvoyOptions()
    group = parser.add_argument_group("retries and timeouts (Envoy; see docs/operations.md)")
    group.add_argument(
        "--retries",
        type=_retries,
        default=defaults.retries,
        help=f"retries of an attempt that failed before its first byte, on the EPP's next endpoint "
        f"(default {defaults.retries})",
    )
    for flag, field_name, what in (
        ("--first-byte-timeout", "first_byte_timeout", "streaming request: each attempt's wait for headers"),
        ("--stream-idle-timeout", "stream_idle_timeout", "streaming request: longest gap between bytes"),
        ("--response-timeout", "response_timeout", "non-streaming request: the whole response"),
    ):
        default = getattr(defaults, field_name)
        group.add_argument(
            flag, type=_seconds, metavar="SECONDS", help=f"{what} (default {default.removesuffix('s')})"
        )


def envoy_options(args: argparse.Namespace) -> EnvoyOptions:
    """Envoy's part of `epp run`: free ports, the chosen modes, the default paths plus --allow-path,
    retries and timeouts."""
    defaults = EnvoyOptions()

    def duration(seconds: float | None, default: str) -> str:
        return default if seconds is None else f"{seconds:g}s"

    latency = args.adaptive_concurrency_latency
    return EnvoyOptions(
        listen_port=0,
        admin_port=0,
        body_mode=args.body_mode,
        failure_mode=args.failure_mode,
        allowed_paths=(*DEFAULT_ALLOWED_PATHS, *args.allow_path),
        retries=args.retries,
        rate_limit=args.rate_limit,
        admission_control_aggression=args.admission_control,
        quota_from_epp=args.quota_from_epp,
        quota_objectives=quota_objectives(args.epp_arg) if args.quota_from_epp else (),
        adaptive_concurrency=args.adaptive_concurrency or latency is not None,
        adaptive_concurrency_latency=None if latency is None else f"{latency:g}s",
        first_byte_timeout=duration(args.first_byte_timeout, defaults.first_byte_timeout),
        stream_idle_timeout=duration(args.stream_idle_timeout, defaults.stream_idle_timeout),
        response_timeout=duration(args.response_timeout, defaults.response_timeout),
    )


def instructions(stack: Stack, model: str) -> str:
    url = stack.gateway_url
    sims = "\n".join(
        f"    {s.name:<10} http://{s.hostport}{_role_note(s.role, s.engine_port)}" for s in stack.sims
    )
    return f"""
Gateway (Envoy)        {url}
Endpoint picker        ext_proc on 127.0.0.1:{stack.epp_ports["grpc_port"]}{_tls_note(stack)}
Live view              {_live_views(stack)}
Simulated vLLM servers
{sims}
Logs and config        {stack.run_dir}/

Send a request (the x-inference-pod response header names the server that answered):

  curl -si {url}/v1/completions -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "prompt": "Say hello", "max_tokens": 16}}'

  curl -sN {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}'

With the openai SDK:

  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="unused")
  reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hi"}}])
  print(reply.choices[0].message.content, reply.usage)

Ctrl-C stops everything.
"""


def _live_views(stack: Stack) -> str:
    """The live view's address; with --workers, each worker's (each records what it routed)."""
    note = "(why each request went where it did; JSON: /api/decisions)"
    workers: list[dict[str, int]] = stack.epp_ports.get("workers", [])
    if len(workers) < 2:
        return f"{stack.view_url}/ui/   {note}"
    views = [f"http://127.0.0.1:{w['metrics_port']}/ui/" for w in workers]
    lines = [f"{view}   worker {i}" for i, view in enumerate(views)]
    return f"{note}; each worker shows the requests it routed:\n" + "\n".join(
        f"{'':23}{line}" for line in lines
    )


def _tls_note(stack: Stack) -> str:
    if stack.mutual_tls:
        return f" (mutual TLS with Envoy: CA and certificates in {stack.tls_dir}/)"
    return " (TLS)" if stack.config.envoy.epp_tls else " (plaintext)"


def _role_note(role: str | None, engine_port: int | None) -> str:
    if role == PREFILL:
        return "   prefill"
    if engine_port is not None:
        return f"   decode: epp sidecar in front of the simulator on port {engine_port}"
    return ""


def _epp_args(args: argparse.Namespace) -> list[str]:
    extra: list[str] = args.epp_arg
    names_config = any(a.startswith(("--config-file", "--config-text")) for a in extra)
    pd_config = [f"--config-file={PD_SAMPLE_CONFIG}"] if args.pd and not names_config else []
    workers = [f"--workers={args.workers}"] if args.workers > 1 else []
    if args.quota_from_epp and args.workers > 1:
        raise ValueError(
            "--quota-from-epp with --workers: Envoy's quota stream reaches one worker, which measures only "
            "its own share of the load"
        )
    quota = quota_epp_args(extra) if args.quota_from_epp else []
    return ["--served-header=x-epp-destination", *pd_config, *workers, *quota, *extra]


def quota_epp_args(extra: list[str]) -> list[str]:
    """The EPP's side of --quota-from-epp: its RLQS server, and the standing-queue controller it
    follows at 50 ms (the shared-host value, docs/benchmarks.md) unless `extra` sets it."""
    target = [] if any(a.startswith("--queue-wait-target") for a in extra) else ["--queue-wait-target=50ms"]
    return ["--rate-limit-quota", *target]


def quota_objectives(extra: list[str]) -> tuple[str, ...]:
    """The objectives the gateway's quota gives a bucket each: those of the EPP's --objectives-file
    (in `extra`, its `epp serve` arguments), so the gateway and the EPP agree on their names."""
    path = None
    for i, arg in enumerate(extra):
        if arg.startswith("--objectives-file="):
            path = arg.split("=", 1)[1]
        elif arg == "--objectives-file" and i + 1 < len(extra):
            path = extra[i + 1]
    return () if path is None else tuple(load_objectives_file(Path(path)))


async def _main(args: argparse.Namespace) -> None:
    prefill_sims, decode_sims = args.pd or (0, 0)
    config = StackConfig(
        run_dir=args.run_dir.resolve(),
        sims=args.sims,
        model=args.model,
        sim_args=args.sim_arg,
        epp_args=_epp_args(args),
        envoy=envoy_options(args),
        gateway_port=args.port,
        prefill_sims=prefill_sims,
        decode_sims=decode_sims,
        epp_connections=2 * args.workers if args.workers > 1 else 1,
    )
    stop = stop_event()
    pool = (
        f"{prefill_sims} prefill + {decode_sims} decode simulators" if args.pd else f"{args.sims} simulators"
    )
    print(f"starting {pool}, the EPP and Envoy (logs in {config.run_dir}) ...", flush=True)
    async with Stack(config) as stack:
        print(instructions(stack, args.model), flush=True)
        servers = [*stack.sidecar_processes, *stack.sim_processes]
        backoff = RestartBackoff()
        while not stop.is_set():
            assert stack.envoy is not None and stack.epp is not None
            stack.envoy.check_alive()
            if not stack.epp.running:
                await _restart_epp(stack, backoff, stop)
            for process in [p for p in servers if not p.running]:
                # Losing a model server is what the EPP is for: it leaves rotation, the rest serve on.
                print(f"{process.name} exited with {process.returncode}; the others keep serving", flush=True)
                servers.remove(process)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)
    print("stopped.")


async def _restart_epp(stack: Stack, backoff: RestartBackoff, stop: asyncio.Event) -> None:
    """Envoy answers new requests 503 until the EPP is back (and, in buffered mode, keeps the
    streams it has routed): restart it (with backoff if it keeps dying) rather than stop everything."""
    assert stack.epp is not None
    delay = backoff.next_delay()
    # Only in buffered mode does ext_proc fail open for a routed response; with full-duplex every
    # response chunk passes through the dead EPP, so its streams were cut (docs/operations.md),
    # unless it stopped on a signal (exit 0), which it does only once they ended or its
    # --shutdown-grace ran out.
    if stack.config.envoy.body_mode == "buffered":
        streams = "streams already routed go on"
    elif stack.epp.returncode == 0:
        streams = "it stopped on a signal, after its streams in flight ended (or its --shutdown-grace did)"
    else:
        streams = "its streams in flight were cut: full-duplex passes every chunk through it"
    print(
        f"the EPP exited with {stack.epp.returncode}; restarting it in {delay:g}s "
        f"(log {stack.epp.log_path}; {streams})",
        flush=True,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
    if stop.is_set():
        return
    try:
        await stack.restart_epp()
    except EnvoyDidNotSeeEpp as exc:
        # The EPP runs (no restart follows): what failed is Envoy's check of it.
        envoy_log = stack.envoy.log_path if stack.envoy is not None else "run/"
        print(
            f"the EPP runs again (restart {backoff.restarts + 1}), but Envoy did not find it healthy: new "
            f"requests get 503 until it does (Envoy's log {envoy_log}): {exc}",
            flush=True,
        )
        backoff.started()
        return
    except ProcessFailed as exc:
        print(f"the EPP did not come back: {exc}", flush=True)
        return
    backoff.started()
    print(f"the EPP is back (restart {backoff.restarts})", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_main(args))
    except (ProcessFailed, ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 1
    return 0
