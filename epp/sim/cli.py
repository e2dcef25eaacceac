"""Run simulated vLLM-compatible model servers on 127.0.0.1.

Each server models one vLLM V1 engine on a GPU (continuous batching, chunked prefill, paged KV
cache with prefix caching, LoRA slots, P/D legs) and serves the OpenAI API, /metrics with vLLM's
metric names, and optional ZMQ KV events. See docs/simulator.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import replace

from epp import eventloop
from epp.params.flagtypes import number_in_range
from epp.signals import stop_event
from epp.sim.cluster import SimCluster, make_configs
from epp.sim.config import ROLES, parse_lora_modules
from epp.sim.engine import SCHEDULING_POLICIES
from epp.sim.pd import KV_LOAD_FAILURE_POLICIES
from epp.sim.profiles import DEFAULT_PROFILE, PROFILES, get_profile

log = logging.getLogger(__name__)

MAX_PORT = 65535


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer within the bounds (argparse names the flag and exits 2)."""
    bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
    message = f"expected an integer {bounds}, got {{text!r}}"
    return number_in_range(int, minimum, maximum, message=message, not_a_number=message)


def _positive_float(text: str) -> float:
    """An argparse type: a finite number above zero."""
    with contextlib.suppress(ValueError):
        value = float(text)
        if math.isfinite(value) and value > 0:
            return value
    raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text!r}")


_count = _integer(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--count", type=_count, default=1, help="simulated endpoints in this process (default 1)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=_integer(0, MAX_PORT),
        default=8000,
        help="first port; the next ones follow; 0 = free ports",
    )
    parser.add_argument(
        "--model", "--served-model-name", dest="model", default="sim-model", help="served model name"
    )
    parser.add_argument(
        "--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES), help="hardware/model profile"
    )
    parser.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        help="multiply simulated durations (0.1 = 10x faster)",
    )
    parser.add_argument("--max-num-seqs", type=_count, help="override the profile's running-batch cap")
    parser.add_argument("--max-num-batched-tokens", type=_count, help="override the per-step token budget")
    parser.add_argument(
        "--num-gpu-blocks",
        type=_integer(2),
        help="override the KV-cache capacity in blocks (vLLM's count: one is its null block)",
    )
    parser.add_argument("--block-size", type=_count, help="override the KV block size in tokens")
    parser.add_argument("--max-model-len", type=_count, help="override the context length")
    parser.add_argument("--max-waiting", type=_count, help="waiting-queue cap; beyond it requests get 429")
    parser.add_argument(
        "--max-n-sequences",
        type=_count,
        default=16384,
        help="most samples (n) per request, as vLLM's VLLM_MAX_N_SEQUENCES (default 16384); beyond: 400",
    )
    parser.add_argument(
        "--max-logprobs",
        type=_integer(0),
        default=20,
        help="vLLM's: the most logprobs alternatives per token a request may ask for (default 20); more: 400",
    )
    parser.add_argument(
        "--lora-modules",
        nargs="*",
        default=[],
        help="adapters: name=path, JSON objects, or comma-separated names",
    )
    parser.add_argument("--max-loras", type=_count, help="adapters that can run at once (override)")
    parser.add_argument(
        "--role", choices=ROLES, default="both", help="P/D role label (any server serves both legs)"
    )
    parser.add_argument("--name-prefix", default="sim", help="endpoint names are <prefix>-0, <prefix>-1, ...")
    parser.add_argument("--name", help="the endpoint's name when --count is 1 (instead of <prefix>-0)")
    parser.add_argument("--seed", type=int, default=0, help="seed for generated lengths and text")
    parser.add_argument(
        "--kv-events-endpoint", help="publish vLLM KV events over ZMQ PUB to this tcp:// endpoint"
    )
    parser.add_argument(
        "--lease-seconds",
        type=_positive_float,
        default=30.0,
        help="how long prefill legs keep their KV, in simulated seconds (scaled by --time-scale)",
    )
    parser.add_argument(
        "--scheduling-policy",
        choices=SCHEDULING_POLICIES,
        default="fcfs",
        help="vLLM's: fcfs (default), or priority (the request body's `priority`, lower first)",
    )
    parser.add_argument(
        "--kv-load-failure-policy",
        choices=KV_LOAD_FAILURE_POLICIES,
        default="fail",
        help="vLLM's kv_load_failure_policy: a decode leg whose KV pull fails ends with an error (fail, "
        "the default) or computes its prompt locally (recompute)",
    )
    parser.add_argument("--ready-file", help="write the endpoints as JSON here once every server listens")
    eventloop.add_argument(parser)


def run(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile).with_overrides(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_gpu_blocks=args.num_gpu_blocks,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        max_waiting=args.max_waiting,
        max_loras=args.max_loras,
    )
    if args.name and args.count != 1:
        log.error("--name names a single endpoint: use --name-prefix with --count %d", args.count)
        return 2
    if args.port and args.port + args.count - 1 > MAX_PORT:
        log.error("--port %d with --count %d runs past port %d", args.port, args.count, MAX_PORT)
        return 2
    configs = make_configs(
        args.count,
        name_prefix=args.name_prefix,
        port=args.port,
        host=args.host,
        model=args.model,
        profile=profile,
        time_scale=args.time_scale,
        lora_modules=parse_lora_modules(args.lora_modules),
        role=args.role,
        seed=args.seed,
        kv_events_endpoint=args.kv_events_endpoint,
        lease_seconds=args.lease_seconds,
        max_n_sequences=args.max_n_sequences,
        max_logprobs=args.max_logprobs,
        scheduling_policy=args.scheduling_policy,
        kv_load_failure_policy=args.kv_load_failure_policy,
    )
    if args.name:
        configs = [replace(configs[0], name=args.name)]
    try:
        eventloop.run(_serve(SimCluster(configs), args.ready_file), args.event_loop)
    except eventloop.UnavailableLoop as exc:  # --event-loop uvloop without uvloop
        log.error("%s", exc)
        return 2
    except OSError as exc:  # a port in use, the ready file's directory missing: one line, no traceback
        log.error("%s", exc)
        return 1
    return 0


async def _serve(cluster: SimCluster, ready_file: str | None) -> None:
    stop = stop_event()
    async with cluster:
        for endpoint in cluster.endpoints:
            log.info("simulated server %s listening on %s", endpoint.name, endpoint.url)
        if ready_file:
            cluster.write_ready_file(ready_file)
        await stop.wait()
        log.info("stopping %d simulated servers", len(cluster.servers))
