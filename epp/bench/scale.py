"""How fast the virtual-time engine is: a large cluster and workload, timed per policy.

Reports wall time, simulated requests and engine steps per second, and the EPP's own mean cost
per scheduling decision (the director's `scheduler_e2e` histogram, which times `schedule`), so a
slow run can be attributed to the simulator engine, the harness or the scheduler under test.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from epp.bench.argtypes import positive
from epp.bench.report import publish, table
from epp.bench.suite import Suite
from epp.bench.summary import summarize
from epp.bench.virtual import VirtualCluster, VirtualRun
from epp.bench.workload import WorkloadSpec, generate
from epp.sim.profiles import PROFILES, get_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", type=Path, default=Path("bench/suite.yaml"))
    parser.add_argument(
        "--policy", action="append", default=[], help="suite policy (repeatable; default random)"
    )
    count = positive(int)
    parser.add_argument("--endpoints", type=count, default=1000)
    parser.add_argument("--groups", type=count, default=1000, help="shared-prefix groups")
    parser.add_argument("--per-group", type=count, default=100, help="requests per group")
    parser.add_argument("--system-len", type=count, default=1000)
    parser.add_argument("--question-len", type=count, default=100)
    parser.add_argument("--output-len", type=count, default=100)
    parser.add_argument("--rate", type=positive(float), default=10_000.0, help="requests/s offered")
    parser.add_argument("--profile", default="llama-3.1-8b-h100", choices=sorted(PROFILES))
    parser.add_argument("--doc", type=Path, help="also write the table into this document's scale block")


def workload(args: argparse.Namespace) -> WorkloadSpec:
    return WorkloadSpec.model_validate(
        {
            "name": "scale",
            "seed": 7,
            "data": {
                "type": "shared_prefix",
                "num_groups": args.groups,
                "num_prompts_per_group": args.per_group,
                "system_prompt_len": args.system_len,
                "question_len": args.question_len,
                "output_len": args.output_len,
            },
            "load": {"rates": [args.rate]},
            "cluster": {"endpoints": args.endpoints, "profile": args.profile},
        }
    )


def main(args: argparse.Namespace) -> int:
    suite = Suite.load(args.suite)
    known = [policy.name for policy in suite.spec.policies]  # listed in the suite's order
    if unknown := [name for name in args.policy if name not in known]:
        raise SystemExit(
            f"epp bench scale: no policy {unknown[0]!r} in {args.suite}; known: {', '.join(known)}"
        )
    spec = workload(args)
    started = time.perf_counter()
    requests = generate(spec, args.rate)
    generated = time.perf_counter() - started
    rows = []
    policies = args.policy or ["random"]
    for number, name in enumerate(policies):
        cluster = VirtualCluster(args.endpoints, get_profile(args.profile))
        run = VirtualRun(requests, suite.picker_config(suite.policy(name)), cluster)
        result = run.run()
        summary = summarize(result)
        steps = sum(server.engine.stats.steps for server in run.servers.values())
        decisions = next(iter(run.director.metrics.scheduler_e2e.collect())).samples
        total = next(s.value for s in decisions if s.name.endswith("_sum"))
        count = next(s.value for s in decisions if s.name.endswith("_count"))
        rows.append(
            [
                name,
                f"{result.wall_seconds:.1f} s",
                f"{len(requests) / result.wall_seconds:,.0f}",
                f"{steps / result.wall_seconds:,.0f}",
                f"{total / count * 1e6:,.0f} µs" if count else "n/a",
                f"{summary.duration_s:.1f} s",
                f"{summary.completed:,}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
        if number < len(policies) - 1:
            # The run's objects hold cycles (its plugins' clock reads the run), so only a full
            # collection frees them: without one the next policy ran beside this one's gigabyte
            # and faulted in fresh pages (771 against 311 MB for `ours` after two others).
            del run, result
            gc.collect()
    text = "\n".join(
        [
            f"- command: `{args.command_line}`",
            f"- workload: shared prefix, {args.groups} groups x {args.per_group} requests "
            f"({len(requests):,} requests), {args.system_len}-token system prompt, {args.question_len}-token "
            f"question, {args.output_len} output tokens, Poisson {args.rate:g} req/s, on {args.endpoints} "
            f"simulated {args.profile} servers; generating the requests took {generated:.1f} s",
            "",
            table(
                [
                    "policy",
                    "wall time",
                    "requests/s simulated",
                    "engine steps/s",
                    "mean scheduling decision",
                    "virtual time",
                    "completed",
                ],
                rows,
            ),
        ]
    )
    publish(text, args.doc, "scale")
    return 0
