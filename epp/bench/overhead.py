"""What the EPP costs: the same simulators behind the same Envoy, with and without ext_proc.

One stack serves both paths: Envoy's gateway listener consults the EPP, its baseline listener
round-robins without it. Tiny streamed requests (a few prompt tokens, one output token, simulators
at a time scale that makes their own latency microseconds) are sent at fixed rates to each path in
turn; the difference in client latency is what the EPP adds, and the EPP process's CPU time over
the run (utime + stime from /proc/<pid>/stat) is its CPU share. One EPP process is one core at
most, so CPU seconds per request give the rate it could hold on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from epp.bench.loadgen import run_realtime
from epp.bench.report import publish, table
from epp.bench.summary import percentile
from epp.bench.workload import BenchRequest
from epp.stack.envoy import BODY_MODES, EnvoyOptions
from epp.stack.stack import Stack, StackConfig

MODEL = "sim-model"
IDLE_SECONDS = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", action="append", type=float, default=[], help="req/s (default 50..1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate and path (default 10)")
    parser.add_argument("--sims", type=int, default=2)
    parser.add_argument("--config-file", type=Path, help="EPP config (default: GIE's default profile)")
    parser.add_argument(
        "--body-mode",
        choices=BODY_MODES,
        default="buffered",
        help="Envoy ext_proc body mode (default buffered)",
    )
    parser.add_argument(
        "--plaintext", action="store_true", help="Envoy -> EPP without TLS (default TLS, as GIE)"
    )
    parser.add_argument("--run-dir", type=Path, default=Path("run/bench-overhead"))
    parser.add_argument("--doc", type=Path, help="also write the table into this document's overhead block")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (the fields after the parenthesised command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tiny_requests(rate: float, seconds: float) -> list[BenchRequest]:
    count = int(rate * seconds)
    return [BenchRequest(i, i / rate, "tiny", 1, prompt=("Say hello in one word",)) for i in range(count)]


@dataclass
class PathRun:
    p50: float
    p99: float
    achieved: float
    errors: int
    epp_cpu: float  # cores
    envoy_cpu: float  # cores


async def measure(stack: Stack, url: str, rate: float, seconds: float) -> PathRun:
    assert stack.epp is not None and stack.envoy is not None
    names = [s.name for s in stack.sims]
    epp0, envoy0 = cpu_seconds(stack.epp.pid), cpu_seconds(stack.envoy.pid)
    result = await run_realtime(tiny_requests(rate, seconds), url, MODEL, names)
    epp1, envoy1 = cpu_seconds(stack.epp.pid), cpu_seconds(stack.envoy.pid)
    wall = result.wall_seconds
    latencies = [r.e2e for r in result.records if r.ok and r.e2e is not None]
    return PathRun(
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        achieved=len(latencies) / wall,
        errors=sum(1 for r in result.records if not r.ok),
        epp_cpu=(epp1 - epp0) / wall,
        envoy_cpu=(envoy1 - envoy0) / wall,
    )


async def main(args: argparse.Namespace) -> int:
    rates = args.rate or [50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1000.0]
    epp_args = ["--refresh-metrics-interval=50ms"]
    if args.config_file:
        epp_args.append(f"--config-file={args.config_file.resolve()}")
    config = StackConfig(
        run_dir=args.run_dir,
        sims=args.sims,
        model=MODEL,
        sim_args=["--profile=tiny-test", "--time-scale=0.001"],
        epp_args=epp_args,
        baseline_listener=True,
        envoy=EnvoyOptions(listen_port=0, admin_port=0, body_mode=args.body_mode, epp_tls=not args.plaintext),
    )
    rows = []
    async with Stack(config) as stack:
        assert stack.epp is not None
        await measure(stack, stack.gateway_url, 50.0, 2.0)  # warm connections and code paths
        await measure(stack, stack.baseline_url, 50.0, 2.0)
        before = cpu_seconds(stack.epp.pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle = (cpu_seconds(stack.epp.pid) - before) / IDLE_SECONDS  # scraping the servers, timers
        for rate in rates:
            plain = await measure(stack, stack.baseline_url, rate, args.seconds)
            picked = await measure(stack, stack.gateway_url, rate, args.seconds)
            busy = max(picked.epp_cpu - idle, 0.0)
            per_request = busy / picked.achieved if picked.achieved else float("nan")
            rows.append(
                [
                    f"{rate:g}",
                    f"{plain.p50 * 1e3:.2f} / {plain.p99 * 1e3:.2f}",
                    f"{picked.p50 * 1e3:.2f} / {picked.p99 * 1e3:.2f}",
                    f"{(picked.p50 - plain.p50) * 1e3:+.2f} / {(picked.p99 - plain.p99) * 1e3:+.2f}",
                    f"{plain.achieved:.0f} / {picked.achieved:.0f}",
                    f"{picked.epp_cpu:.0%}",
                    f"{per_request * 1e3:.2f} ms",
                    f"{(1 - idle) / per_request:,.0f}" if per_request > 0 else "n/a",
                    f"{plain.envoy_cpu:.0%} / {picked.envoy_cpu:.0%}",
                    f"{plain.errors} / {picked.errors}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    policy = f"`{args.config_file}`" if args.config_file else "GIE's default profile"
    transport = f"{args.body_mode}, {'plaintext' if args.plaintext else 'TLS'}"
    text = "\n".join(
        [
            f"- command: `{args.command_line}`",
            f"- {args.sims} simulators (tiny-test profile at time scale 0.001), Envoy `--concurrency 1`, "
            f"the EPP with {policy} ({transport}); {args.seconds:g} s per rate and path; load generator, "
            "Envoy, EPP and simulators share the machine",
            f"- the idle EPP (scraping {args.sims} servers every 50 ms) uses {idle:.1%} of a core; "
            "per-request CPU is the rest divided by the achieved rate; one core holds (1 - idle) / that",
            "",
            table(
                [
                    "offered req/s",
                    "no EPP p50 / p99 (ms)",
                    "with EPP p50 / p99 (ms)",
                    "added p50 / p99 (ms)",
                    "achieved req/s (no EPP / EPP)",
                    "EPP CPU",
                    "EPP CPU per request",
                    "req/s on one core (extrapolated)",
                    "Envoy CPU (no EPP / EPP)",
                    "errors",
                ],
                rows,
            ),
        ]
    )
    publish(text, args.doc, "overhead")
    return 0
