"""Active-active EPP replicas in real time, through real Envoy: the `agreement` workload (small
enough for a 2-core machine) with one EPP, then N replicas synced through Redis and N naive ones
side by side, each run a fresh stack; prints the hit rate and TTFT p90 of each.

    .venv/bin/python bench/replicas_realtime.py [--replicas 2 --replicas 4] [--time-scale 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

from epp.bench.loadgen import run_realtime
from epp.bench.realtime import MODEL, RealtimeCluster, RealtimePolicy, stack_config
from epp.bench.summary import summarize
from epp.bench.workload import generate, load_spec
from epp.stack.stack import Stack

ROOT = Path(__file__).resolve().parents[1]


async def one(args: argparse.Namespace, replicas: int, sync: bool) -> str:
    spec = load_spec(args.workload)
    requests = generate(spec, args.rate or spec.load.rates[0])
    cluster = RealtimeCluster(
        spec.cluster.endpoints, spec.cluster.profile, args.time_scale, 0.05 * args.time_scale
    )
    with tempfile.TemporaryDirectory(prefix="replicas-rt-") as run_dir:
        config = stack_config(RealtimePolicy(args.config), cluster, Path(run_dir))
        config = replace(config, epp_replicas=replicas, epp_replica_sync=sync)
        async with Stack(config) as stack:
            names = [sim.name for sim in stack.sims]
            result = await run_realtime(requests, stack.gateway_url, MODEL, names, cluster.time_scale)
    s = summarize(result)
    label = "—" if replicas == 1 else "synced" if sync else "naive"
    return (
        f"| {replicas} | {label} | {s.completed}/{s.requests} | {s.hit_rate:.1%} | {s.ttft_p50:.3f} | "
        f"{s.ttft_p90:.3f} |"
    )


async def main(args: argparse.Namespace) -> None:
    print("| replicas | sync | completed | hit rate | TTFT p50 s | TTFT p90 s |")
    print("|---:|---|---:|---:|---:|---:|")
    print(await one(args, 1, False), flush=True)
    for replicas in args.replicas or [2, 4]:
        for sync in (True, False):
            print(await one(args, replicas, sync), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", type=Path, default=ROOT / "bench/workloads/agreement.yaml")
    parser.add_argument("--config", type=Path, default=ROOT / "bench/configs/ours-approximate.yaml")
    parser.add_argument("--rate", type=float, default=0.0, help="default: the workload's first rate")
    parser.add_argument("--replicas", type=int, action="append", default=[])
    parser.add_argument("--time-scale", type=float, default=2.0)
    asyncio.run(main(parser.parse_args()))
