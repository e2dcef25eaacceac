"""Requests/s and EPP CPU per request with 1, 2 and 4 `epp serve --workers` through real Envoy.

Each round starts the stack (Envoy, the EPP with N workers joined by their private redis-server,
`--sims` tiny simulators) for every worker count in a new random order, drives it closed-loop with
`--concurrency` clients for `--seconds`, and records completed requests/s and the CPU time
(utime + stime from /proc) of the EPP's whole process tree (supervisor, workers, redis-server) per
request. The machine is shared, so the figures are paired by round and reported as the median over
rounds; CPU per request is the steadier one.

    .venv/bin/python bench/workers_bench.py [--workers 1 --workers 2 --workers 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from epp.stack.envoy import EnvoyOptions
from epp.stack.stack import Stack, StackConfig

TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and all its descendants (live ones)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(times.get(pid, 0.0) for pid in tree)


async def drive(url: str, concurrency: int, seconds: float) -> int:
    done = 0
    stop_at = time.monotonic() + seconds
    body = {"model": "sim-model", "prompt": "hello " * 200, "max_tokens": 1}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            async with session.post(f"{url}/v1/completions", json=body) as response:
                await response.read()
                if response.status == 200:
                    done += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return done


async def one(workers: int, args: argparse.Namespace) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as run_dir:
        config = StackConfig(
            run_dir=Path(run_dir),
            sims=args.sims,
            sim_args=["--profile=tiny-test"],
            epp_args=["--refresh-metrics-interval=50ms", "--secure-serving=false"]
            + ([f"--workers={workers}"] if workers > 1 else []),
            envoy=EnvoyOptions(listen_port=0, admin_port=0, epp_tls=False),
            epp_connections=2 * workers if workers > 1 else 1,
        )
        async with Stack(config) as stack:
            assert stack.epp is not None
            await drive(stack.gateway_url, args.concurrency, 1.0)  # warm up
            idle = tree_cpu(stack.epp.pid)
            idle_started = time.monotonic()
            await asyncio.sleep(args.idle_seconds)  # no requests: scraping, Redis exchanges, gauges
            idle = (tree_cpu(stack.epp.pid) - idle) / (time.monotonic() - idle_started)
            cpu = tree_cpu(stack.epp.pid)
            started = time.monotonic()
            done = await drive(stack.gateway_url, args.concurrency, args.seconds)
            elapsed = time.monotonic() - started
            cpu = tree_cpu(stack.epp.pid) - cpu
            shares = await served_per_worker(stack)
        print(f"  {workers} workers: served per worker {shares}; idle CPU {idle:.3f} s/s", flush=True)
        return done / elapsed, cpu / max(done, 1) * 1000, (cpu - idle * elapsed) / max(done, 1) * 1000


async def served_per_worker(stack: Stack) -> list[int]:
    """Each worker's inference_objective_request_total: how Envoy's connections spread the load."""
    workers = stack.epp_ports.get("workers") or [stack.epp_ports]
    counts = []
    async with aiohttp.ClientSession() as session:
        for worker in workers:  # type: ignore[attr-defined]
            async with session.get(f"http://127.0.0.1:{worker['metrics_port']}/metrics") as response:
                text = await response.text()
            counts.append(
                int(
                    sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("inference_objective_request_total{")
                    )
                )
            )
    return counts


async def main(args: argparse.Namespace) -> None:
    counts = args.workers or [1, 2, 4]
    results: dict[int, list[tuple[float, float, float]]] = {n: [] for n in counts}
    for round_ in range(args.rounds):
        order = random.Random(round_).sample(counts, len(counts))
        for workers in order:
            rps, cpu_ms, marginal = await one(workers, args)
            results[workers].append((rps, cpu_ms, marginal))
            print(
                f"round {round_}: {workers} workers: {rps:.0f} req/s, {cpu_ms:.2f} ms CPU/request "
                f"({marginal:.2f} ms above idle)",
                flush=True,
            )
    print("| workers | req/s | EPP CPU ms/request | of which above idle | rounds |")
    print("|---:|---:|---:|---:|---:|")
    for workers in counts:
        rps = statistics.median(r for r, _, _ in results[workers])
        cpu = statistics.median(c for _, c, _ in results[workers])
        marginal = statistics.median(m for _, _, m in results[workers])
        print(f"| {workers} | {rps:.0f} | {cpu:.2f} | {marginal:.2f} | {len(results[workers])} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sims", type=int, default=4)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
