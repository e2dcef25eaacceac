"""Do the two engines agree? One workload, the same policies, once through real Envoy + EPP +
simulator processes and once in virtual time; the report lists both and their relative gaps.

The real-time path adds what virtual time leaves out (HTTP, Envoy, ext_proc, scraping over HTTP,
asyncio timer slack in the simulator's step loop, CPU contention on a small machine), so the
figures differ by those costs; the table shows by how much, against the stated tolerance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from epp.bench.realtime import run_stack
from epp.bench.report import publish, seconds, table
from epp.bench.suite import Suite, realtime_cluster, virtual_cluster
from epp.bench.summary import Summary, summarize
from epp.bench.virtual import run_virtual
from epp.bench.workload import generate, load_spec

TOLERANCE = 0.15
"""Relative gap accepted between the engines for every figure; prefix-cache hit rates are compared
in absolute points (the same 0.15 as a fraction)."""
LATENCY_FLOOR = 0.020
"""...or, for latencies, this many modelled seconds: the wire (HTTP, Envoy, ext_proc) adds a few
milliseconds that virtual time leaves out, which is a large share of a 30 ms TTFT."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", type=Path, default=Path("bench/suite.yaml"))
    parser.add_argument("--workload", type=Path, default=Path("bench/workloads/agreement.yaml"))
    parser.add_argument("--policy", action="append", default=[], help="suite policy (default: several)")
    parser.add_argument("--rate", type=float, help="default: the workload's first rate")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulators' --time-scale in real time")
    parser.add_argument("--scrape-interval", type=float, default=0.05, help="modelled seconds")
    parser.add_argument("--run-dir", type=Path, default=Path("run/bench-agree"))
    parser.add_argument("--doc", type=Path, help="also write the comparison into this document's block")


FIGURES = (
    ("out tok/s", lambda s: s.output_tokens_per_s),
    ("TTFT p50", lambda s: s.ttft_p50),
    ("TTFT p90", lambda s: s.ttft_p90),
    ("ITL p50", lambda s: s.itl_p50),
    ("e2e p50", lambda s: s.e2e_p50),
)


def gaps(real: Summary, virtual: Summary) -> dict[str, float]:
    """Relative gap per figure ((real - virtual) / virtual), hit rate as an absolute difference."""
    found = {name: (get(real) - get(virtual)) / get(virtual) for name, get in FIGURES if get(virtual)}
    found["hit"] = real.hit_rate - virtual.hit_rate
    return found


def within_tolerance(real: Summary, virtual: Summary) -> list[str]:
    """The figures whose gap is outside the tolerance (empty: the engines agree)."""
    outside = [
        name
        for name, get in FIGURES
        if abs(get(real) - get(virtual)) > TOLERANCE * get(virtual)
        and (name == "out tok/s" or abs(get(real) - get(virtual)) > LATENCY_FLOOR)
    ]
    if abs(real.hit_rate - virtual.hit_rate) > TOLERANCE:
        outside.append("hit")
    return outside


def _cell(get_value: float, name: str) -> str:
    return f"{get_value:,.0f}" if name == "out tok/s" else seconds(get_value)


async def main(args: argparse.Namespace) -> int:
    suite = Suite.load(args.suite)
    spec = load_spec(args.workload)
    rate = args.rate or spec.load.rates[0]
    requests = generate(spec, rate)
    rows: list[list[str]] = []
    outside: list[str] = []
    for name in args.policy or ["round-robin", "gie-default", "ours"]:
        policy = suite.policy(name)
        virtual = summarize(
            run_virtual(requests, suite.picker_config(policy), virtual_cluster(spec, args.scrape_interval, 0))
        )
        cluster = realtime_cluster(spec, args.time_scale, args.scrape_interval)
        realtime = suite.realtime_policy(policy)
        real = summarize(await run_stack(requests, realtime, cluster, args.run_dir / name))
        found = gaps(real, virtual)
        outside += [f"{name} {figure}" for figure in within_tolerance(real, virtual)]
        for engine, summary in (("real time", real), ("virtual", virtual)):
            cells = [_cell(get(summary), figure) for figure, get in FIGURES]
            rows.append([name, engine, *cells, f"{summary.hit_rate:.1%}", str(summary.errors)])
        rows.append(
            [name, "gap", *(f"{found.get(f, 0.0):+.1%}" for f, _ in FIGURES), f"{found['hit']:+.1%}", ""]
        )
        print(f"{name}: " + ", ".join(f"{k} {v:+.1%}" for k, v in found.items()), flush=True)
    text = "\n".join(
        [
            f"- command: `{args.command_line}`",
            f"- workload `{spec.name}` at {rate:g} req/s: {spec.description}; simulators at time scale "
            f"{args.time_scale:g}, scrape interval {args.scrape_interval * 1000:g} ms (modelled)",
            f"- tolerance: {TOLERANCE:.0%} relative, or {LATENCY_FLOOR * 1000:g} ms absolute for latencies, "
            f"{TOLERANCE:.0%} points for the hit rate; "
            + (f"OUTSIDE it: {', '.join(outside)}" if outside else "every figure is within it"),
            "",
            table(
                ["policy", "engine", *(f for f, _ in FIGURES), "hit", "errors"],
                rows,
            ),
        ]
    )
    publish(text, args.doc, "agreement")
    return 0
