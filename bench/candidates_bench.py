"""CPU per scheduling decision over many candidates: GIE's default configuration (or --config), N endpoints
(default 1,000, as `epp bench scale`), ~1,100-token prompts from 100 shared 1,000-token prefixes.

Times `schedule` + `pre_request` with `time.thread_time` (CPU of this thread only, so other
processes on a shared machine do not inflate it), mean of each round of decisions, after a
warm-up round. A crude server model feeds the picks back into queue and KV-cache use. The last
field is a digest of every pick: equal digests mean the same decisions.

    .venv/bin/python bench/candidates_bench.py [--endpoints N] [--requests N] [--rounds N] [--profile]
        [--config bench/configs/ours.yaml]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import random
import time
from pathlib import Path

from decision_setup import build, make_pool, serve

from epp.requests import ApiKind, InferenceRequest

MODEL = "m"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one round instead")
    parser.add_argument("--config", type=Path, help="an EndpointPickerConfig file (default: GIE's default)")
    args = parser.parse_args()
    rng = random.Random(1)
    datastore = make_pool(
        args.endpoints,
        MODEL,
        rng,
        4096,
        name=lambda i: f"e{i}",
        address=lambda i: f"10.{i // 250}.0.{i % 250 + 1}",
    )
    _, components = build(datastore, 1, args.config)
    scheduler, hooks = components.scheduler, components.hooks
    endpoints = datastore.ready_endpoints()
    prefixes = [rng.randbytes(2000).hex().encode() for _ in range(100)]
    picks: list[str] = []

    def round_of(count: int) -> float:
        cpu = 0.0
        for i in range(count):
            prompt = rng.choice(prefixes) + rng.randbytes(200).hex().encode()
            request = InferenceRequest(str(i), ApiKind.COMPLETIONS, "/v1/completions", MODEL, prompt=prompt)
            started = time.thread_time()
            result = scheduler.schedule(request, endpoints)
            hooks.pre_request(request, result)
            cpu += time.thread_time() - started
            chosen = result.targets[0]
            picks.append(chosen.name)
            serve(endpoints, chosen, i, stamp=False)
        return cpu / count

    round_of(args.requests)  # warm-up: the prefix index fills, the picks spread
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        round_of(args.requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        return
    means = [round_of(args.requests) * 1e6 for _ in range(args.rounds)]
    digest = hashlib.sha256(",".join(picks).encode()).hexdigest()[:12]
    print(
        f"{args.endpoints} endpoints: " + ", ".join(f"{m:.0f}" for m in means) + " us CPU per decision "
        f"(rounds of {args.requests}); picks digest {digest}"
    )


if __name__ == "__main__":
    main()
