"""An overload ramp through real Envoy: 0.5x, 1x, 2x and 5x the rate one EPP process serves.

Envoy (buffered, TLS), `epp serve` and simulators at time scale 0.001 (their own latency is
microseconds, so the EPP is the bottleneck) on 127.0.0.1; open-loop load from several load
generator processes (one asyncio loop each, aiohttp), each request a non-streamed completion with
a prompt of --prompt-bytes and one output token. Per rate: how many were served, shed (429 from
the EPP's overload protection or flow control, or Envoy's --rate-limit), and failed with a 5xx
(504 = Envoy's ext_proc message timeout), with latency percentiles of each kind.

    .venv/bin/python bench/overload_ramp.py --base 400 --seconds 10
    .venv/bin/python bench/overload_ramp.py --base 300 --rates 1 --config-file flow.yaml  # flow control
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from epp.bench.summary import percentile
from epp.stack.envoy import EnvoyOptions
from epp.stack.stack import Stack, StackConfig

MODEL = "sim-model"


def worker(
    url: str, rate: float, seconds: float, prompt: str, offset: int, out: multiprocessing.Queue
) -> None:
    out.put(asyncio.run(_send_all(url, rate, seconds, prompt, offset)))


async def _send_all(
    url: str, rate: float, seconds: float, prompt: str, offset: int
) -> list[tuple[int, float]]:
    results: list[tuple[int, float]] = []
    seen: set[int] = set()
    count = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, at: float) -> None:
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = orjson.dumps({"model": MODEL, "prompt": f"{offset}-{i} {prompt}", "max_tokens": 1})
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    text = await r.read()
                    results.append((r.status, time.perf_counter() - sent))
                    if r.status >= 500 and r.status not in seen:
                        seen.add(r.status)
                        print(f"first {r.status}: {text[:300]!r}", flush=True)
            except (aiohttp.ClientError, TimeoutError):
                results.append((-1, time.perf_counter() - sent))

        start = time.perf_counter() + 0.2
        await asyncio.gather(*(one(i, start + i / rate) for i in range(count)))
    return results


def ramp_point(url: str, rate: float, seconds: float, prompt: str, workers: int) -> list[tuple[int, float]]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=worker, args=(url, rate / workers, seconds, prompt, w, queue))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    results: list[tuple[int, float]] = []
    for _ in procs:
        results += queue.get()
    for p in procs:
        p.join()
    return results


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.1f}" if values else "-"


async def main(args: argparse.Namespace) -> None:
    epp_args = ["--refresh-metrics-interval=50ms", *args.epp_arg]
    if args.config_file:
        epp_args.append(f"--config-file={args.config_file.resolve()}")
    config = StackConfig(
        run_dir=Path(tempfile.mkdtemp(prefix="overload-")),
        sims=args.sims,
        model=MODEL,
        sim_args=["--profile=tiny-test", "--time-scale=0.001"],
        epp_args=epp_args,
        envoy=EnvoyOptions(listen_port=0, admin_port=0, rate_limit=args.rate_limit),
    )
    prompt = ("lorem ipsum dolor sit amet " * (args.prompt_bytes // 27 + 1))[: args.prompt_bytes]
    print(
        "| offered | sent req/s | 200 | 429 | 5xx (504) | client errors "
        "| p50 / p99 200 (ms) | p50 / p99 429 (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    async with Stack(config) as stack:
        url = stack.gateway_url + "/v1/completions"
        await asyncio.to_thread(ramp_point, url, 50, 1.0, prompt, 1)  # warm up
        for multiplier in args.rates:
            rate = args.base * multiplier
            began = time.perf_counter()
            results = await asyncio.to_thread(ramp_point, url, rate, args.seconds, prompt, args.workers)
            wall = time.perf_counter() - began
            statuses = Counter(status for status, _ in results)
            ok = [t for s, t in results if s == 200]
            shed = [t for s, t in results if s == 429]
            fivexx = sum(n for s, n in statuses.items() if s >= 500)
            print(
                f"| {multiplier:g}x = {rate:g} req/s | {len(results) / wall:.0f} | {len(ok)} | {len(shed)} | "
                f"{fivexx} ({statuses.get(504, 0)}) | {statuses.get(-1, 0)} | {ms(ok, 50)} / {ms(ok, 99)} | "
                f"{ms(shed, 50)} / {ms(shed, 99)} |",
                flush=True,
            )
            await asyncio.sleep(2)  # let the EPP's queues drain between rates


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=float, default=400.0, help="1x: req/s one EPP process serves")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 1, 2, 5])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sims", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--prompt-bytes", type=int, default=4096)
    parser.add_argument("--config-file", type=Path)
    parser.add_argument("--rate-limit", type=int, default=0, help="Envoy's local rate limit (req/s; 0: none)")
    parser.add_argument("--epp-arg", action="append", default=[], help="extra `epp serve` flag")
    asyncio.run(main(parser.parse_args()))
