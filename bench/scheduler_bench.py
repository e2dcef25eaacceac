"""Scheduling decisions per second on one core: 64 endpoints, ~4k-token (~16 KB) prompts, GIE's
default configuration (queue 2, kv-cache 2, prefix-cache 3, max-score picker) unless --config.

A decision is what the EPP does per request once the body is parsed: `schedule` (prefix hashing and
matching, three scorers, the picker) plus `pre_request` (recording the prompt's blocks for the chosen
endpoint) — and, with --director, the director's whole `route` (candidates, admission, metrics).
The workload is shared-prefix (groups of requests with a common system prompt and their own
question), so matches are partial, as in production. Measurement starts once the prefix index is
full (every endpoint's LRU at the capacity its `cache_num_blocks` allows): an empty index is
faster and would flatter the figures.

    .venv/bin/python bench/scheduler_bench.py [--requests N] [--rounds N] [--cpu N] [--director] [--profile]
        [--config bench/configs/ours.yaml]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from decision_setup import build, make_pool, serve

from epp.datastore import Endpoint
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer
from epp.requests import ApiKind, InferenceRequest

ENDPOINTS = 64
PROMPT_BYTES = 16 * 1024  # ~4k tokens at GIE's 4 characters per token
SHARED_PREFIX_BYTES = 12 * 1024
PREFIX_GROUPS = 200
ENGINE_CACHE_BLOCKS = 32_768  # ~0.5M tokens of KV cache per endpoint: the index's LRU capacity
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def prompt_source(rng: random.Random) -> Callable[[int], InferenceRequest]:
    """Request i: one of the shared system prompts plus its own question, ~16 KB in all."""
    prefixes = [rng.randbytes(SHARED_PREFIX_BYTES // 2).hex().encode() for _ in range(PREFIX_GROUPS)]
    suffix_bytes = PROMPT_BYTES - SHARED_PREFIX_BYTES

    def request(i: int) -> InferenceRequest:
        prompt = rng.choice(prefixes) + rng.randbytes(suffix_bytes // 2).hex().encode()
        return InferenceRequest(str(i), ApiKind.COMPLETIONS, "/v1/completions", MODEL, prompt=prompt)

    return request


def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    datastore = make_pool(
        ENDPOINTS,
        MODEL,
        rng,
        ENGINE_CACHE_BLOCKS,
        name=lambda i: f"vllm-{i}-rank-0",
        address=lambda i: f"10.0.{i // 250}.{i % 250 + 1}",
        running=True,
    )
    director, components = build(datastore, args.seed, args.config)
    scheduler, hooks = components.scheduler, components.hooks
    producer = approximate_index(components.plugins.values())
    endpoints = datastore.ready_endpoints()
    next_request = prompt_source(rng)
    picks: Counter[str] = Counter()
    digest = hashlib.sha256()  # of every pick, warm-up included: equal digests, same decisions
    cpu_clock, wall_clock = time.thread_time, time.perf_counter

    def decide(request: InferenceRequest) -> tuple[Endpoint, float, float]:
        """The decision, its CPU time and its wall time. Quote CPU time on a shared machine: it
        excludes time the core spent on other processes."""
        cpu_before, wall_before = cpu_clock(), wall_clock()
        if args.director:
            routed = director.route(request)
            chosen = routed.result.targets[0]
            wall, cpu = wall_clock() - wall_before, cpu_clock() - cpu_before
            routed.finish()
            return chosen, cpu, wall
        result = scheduler.schedule(request, endpoints)
        hooks.pre_request(request, result)
        wall, cpu = wall_clock() - wall_before, cpu_clock() - cpu_before
        return result.targets[0], cpu, wall

    capacity = ENDPOINTS * ENGINE_CACHE_BLOCKS
    warmup = 0
    while sum(producer.index.blocks_held(e) for e in endpoints) < capacity * 0.99:
        for _ in range(1000):
            chosen = decide(next_request(warmup))[0]
            digest.update(chosen.name.encode())
            serve(endpoints, chosen, warmup)
            warmup += 1
    what = (
        "director.route (candidates, admission, schedule, pre_request)"
        if args.director
        else "schedule + pre_request"
    )
    print(
        f"{args.requests} decisions x {args.rounds} rounds, {ENDPOINTS} endpoints, {PROMPT_BYTES // 1024} KB "
        f"prompts, {args.config or 'default config'}: {what}\n"
        f"prefix index full after {warmup} warm-up decisions: {producer.index.size():,} blocks"
    )
    profiler = cProfile.Profile() if args.profile else None
    rounds = []
    decision = warmup
    for r in range(args.rounds):
        cpu, wall = [], []
        if profiler is not None:
            profiler.enable()
        for _ in range(args.requests):
            chosen, cpu_time, wall_time = decide(next_request(decision))
            cpu.append(cpu_time)
            wall.append(wall_time)
            picks[chosen.name] += 1
            digest.update(chosen.name.encode())
            serve(endpoints, chosen, decision)
            decision += 1
        if profiler is not None:
            profiler.disable()
        cpu.sort()
        wall.sort()
        rate = len(cpu) / sum(cpu)
        rounds.append((rate, percentile(cpu, 50), percentile(cpu, 99)))
        print(
            f"  round {r + 1}: {rate:,.0f} decisions/s, p50 {rounds[-1][1] * 1e6:.0f} us, "
            f"p99 {rounds[-1][2] * 1e6:.0f} us CPU time (wall: {len(wall) / sum(wall):,.0f}/s, "
            f"p99 {percentile(wall, 99) * 1e6:.0f} us)"
        )
    rate, p50, p99 = sorted(rounds)[len(rounds) // 2]
    print(
        f"median round: {rate:,.0f} decisions/s on one core, p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us"
    )
    busiest = picks.most_common(1)[0][1] / sum(picks.values())
    print(f"load spread: {len(picks)} endpoints chosen, the busiest took {busiest:.1%} of requests")
    print(f"picks digest {digest.hexdigest()[:12]}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


def approximate_index(plugins: Iterable[object]) -> ApproxPrefixCacheProducer:
    """The approximate prefix producer whose index the warm-up fills: the config's own, or the
    precise producer's fallback."""
    for plugin in plugins:
        producer = plugin.fallback if isinstance(plugin, PrecisePrefixCacheProducer) else plugin
        if isinstance(producer, ApproxPrefixCacheProducer):
            return producer
    raise SystemExit("the config has no approximate prefix index to fill")


def percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="decisions per round (default 10000)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="measured rounds; the median is reported (default 5)"
    )
    parser.add_argument("--cpu", type=int, default=0, help="pin to this CPU (default 0; -1 = no pinning)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--director", action="store_true", help="time the director's whole route()")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the measured rounds")
    parser.add_argument("--config", type=Path, help="an EndpointPickerConfig file (default: GIE's default)")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    run(args)


if __name__ == "__main__":
    main()
