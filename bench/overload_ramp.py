"""An overload ramp through real Envoy: 0.5x, 1x, 2x and 5x the rate one EPP process serves.

Envoy (buffered, TLS), `epp serve` and simulators at time scale 0.001 (their own latency is
microseconds, and their waiting queue unbounded, so the EPP is the bottleneck) on 127.0.0.1;
open-loop load, each request a non-streamed completion with a prompt of --prompt-bytes and one
output token, from either
- `--loadgen h2load` (nghttp2's C load generator, `make bench-overload` installs it): cleartext HTTP/2,
  --clients connections (with 4, it sent 1,034 of 2,000 req/s) with many streams each, paced by
  --rps; every request the same body. It offers 5x on a 2-core machine, where Python cannot;
- `--loadgen python`: several processes, one asyncio loop each (aiohttp, HTTP/1.1, a connection per
  request in flight); every prompt distinct.
Per rate: how many were served, shed (429 from the EPP's overload protection or flow control, or
Envoy's --rate-limit, --adaptive-concurrency, --admission-control or --quota-from-epp; "of which
EPP" counts the EPP's own answers in Envoy's ext_proc stats), and failed with a 5xx (504 = Envoy's ext_proc
message timeout), with latency percentiles of each kind, the EPP's CPU time per request sent and
the machine's load average. After the table, Envoy's counters of its connections to the EPP
(EPP_CONNECTION_STATS).

With --critical-rate, a steady stream of the --critical-objective's requests runs beside each
rate's flood (then sent with --flood-objective's header: h2load only), and a second table gives
that stream's outcome: served, refused by the gateway's quota (x-gateway-limit: quota) or by the
EPP, and its latency. --quota-by-objective gives the gateway's quota a bucket per objective of
--objectives-file (as `epp run --quota-from-epp --epp-arg=--objectives-file=...`); without it,
the quota has its one bucket.

    .venv/bin/python bench/overload_ramp.py --base 300 --seconds 10 --loadgen h2load
    .venv/bin/python bench/overload_ramp.py --base 300 --rates 1 --config-file flow.yaml  # flow control
    .venv/bin/python bench/overload_ramp.py --loadgen h2load --quota-from-epp --rates 3 \
        --objectives-file bench/configs/objectives.yaml --critical-rate 20 [--quota-by-objective]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from epp.bench.summary import percentile
from epp.config.objectives import load_objectives_file
from epp.headers import OBJECTIVE_HEADER
from epp.stack.cli import quota_epp_args
from epp.stack.envoy import EnvoyOptions
from epp.stack.stack import Stack, StackConfig

MODEL = "sim-model"
H2_STREAMS = 10_000  # streams per h2load connection: enough to stay open-loop through seconds of latency
EXT_PROC_ANSWERS = "http.gateway.ext_proc.immediate_responses_sent"
# Envoy's counters of its connections to the EPP, printed after the table: any but the first above
# 0 is a 503 the EPP did not send (a connection closed for a flood, or one that did not connect).
EPP_CONNECTION_STATS = (
    "upstream_cx_total",
    "upstream_cx_connect_timeout",
    "upstream_cx_protocol_error",
    "http2.outbound_control_flood",
    "http2.outbound_flood",
    "upstream_rq_pending_failure_eject",
)


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


async def h2load_point(
    url: str,
    rate: float,
    seconds: float,
    body: Path,
    clients: int,
    log: Path,
    headers: tuple[str, ...] = (),
) -> tuple[list[tuple[int, float]], float]:
    """One rate through h2load; (status, seconds) per request from its per-request log, and the
    rate it sent at. A request that got no response is not in the log: status -1. `headers`:
    more request headers, `name: value` each."""
    count = max(int(rate * seconds), clients)
    argv = [
        "h2load",
        f"--requests={count}",
        f"--clients={clients}",
        f"--max-concurrent-streams={H2_STREAMS}",
        f"--rps={rate / clients:g}",
        f"--data={body}",
        "--header=content-type: application/json",
        *(f"--header={header}" for header in headers),
        f"--log-file={log}",
        url,
    ]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"h2load failed ({process.returncode}): {output.decode()[-2000:]}")
    starts: list[int] = []
    results: list[tuple[int, float]] = []
    for line in (await asyncio.to_thread(log.read_text)).splitlines():
        start, status, micros = line.split("\t")
        starts.append(int(start))
        results.append((int(status), int(micros) / 1e6))
    results += [(-1, 0.0)] * (count - len(results))
    span = (max(starts) - min(starts)) / 1e6 if starts else 0.0
    return results, (len(starts) - 1) / span if span > 0 else 0.0


class Counters:
    """The EPP's CPU time (from /proc) and Envoy's count of the EPP's own answers, read per rate."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        assert stack.epp is not None and stack.epp.process is not None
        self._stat = Path(f"/proc/{stack.epp.process.pid}/stat")

    def cpu_seconds(self) -> float:
        utime, stime = self._stat.read_text().rsplit(")", 1)[1].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    async def epp_answers(self) -> int:
        text = await self._stats(f"^{EXT_PROC_ANSWERS}$")
        return int(text.split(":")[1]) if ":" in text else 0

    async def epp_connection(self) -> str:
        names = "|".join(name.replace(".", r"\.") for name in EPP_CONNECTION_STATS)
        text = await self._stats(rf"^cluster\.epp\.({names})$")
        return ", ".join(line.removeprefix("cluster.epp.") for line in text.splitlines() if line)

    async def _stats(self, pattern: str) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self._stack.admin_url}/stats", params={"filter": pattern}) as r,
        ):
            return await r.text()


async def steady(
    url: str, rate: float, seconds: float, body: bytes, headers: dict[str, str]
) -> list[tuple[int, float, str | None]]:
    """`rate` requests a second for `seconds`, open loop: (status, seconds, x-gateway-limit) each."""
    results: list[tuple[int, float, str | None]] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    results.append((r.status, time.perf_counter() - sent, r.headers.get("x-gateway-limit")))
            except (aiohttp.ClientError, TimeoutError):
                results.append((-1, time.perf_counter() - sent, None))

        start = time.perf_counter()
        await asyncio.gather(*(one(start + i / rate) for i in range(int(rate * seconds))))
    return results


def critical_row(label: str, results: list[tuple[int, float, str | None]]) -> str:
    ok = [t for status, t, _ in results if status == 200]
    quota = sum(1 for status, _, limit in results if status == 429 and limit == "quota")
    epp = sum(1 for status, _, limit in results if status == 429 and limit is None)
    other = len(results) - len(ok) - quota - epp
    share = 100 * len(ok) / max(len(results), 1)
    return (
        f"| {label} | {len(results)} | {len(ok)} ({share:.0f} %) | {quota} | {epp} | {other} | "
        f"{ms(ok, 50)} / {ms(ok, 90)} / {ms(ok, 99)} |"
    )


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.1f}" if values else "-"


async def main(args: argparse.Namespace) -> None:
    epp_args = ["--refresh-metrics-interval=50ms", *args.epp_arg]
    if args.quota_from_epp:
        epp_args += quota_epp_args(args.epp_arg)
    if args.config_file:
        epp_args.append(f"--config-file={args.config_file.resolve()}")
    objectives: tuple[str, ...] = ()
    if args.objectives_file:
        epp_args.append(f"--objectives-file={args.objectives_file.resolve()}")
        objectives = tuple(load_objectives_file(args.objectives_file)) if args.quota_by_objective else ()
    if args.critical_rate and args.loadgen != "h2load":
        raise SystemExit("--critical-rate needs --loadgen h2load (the flood's objective header)")
    if args.loadgen == "h2load" and shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: make h2load (or apt-get install nghttp2-client)")
    run_dir = Path(tempfile.mkdtemp(prefix="overload-"))
    config = StackConfig(
        run_dir=run_dir,
        sims=args.sims,
        model=MODEL,
        sim_args=["--profile=tiny-test", "--time-scale=0.001", "--max-waiting=1000000"],
        epp_args=epp_args,
        envoy=EnvoyOptions(
            listen_port=0,
            admin_port=0,
            rate_limit=args.rate_limit,
            adaptive_concurrency=args.adaptive_concurrency or args.adaptive_concurrency_latency is not None,
            adaptive_concurrency_latency=args.adaptive_concurrency_latency,
            admission_control_aggression=args.admission_control,
            quota_from_epp=args.quota_from_epp,
            quota_objectives=objectives,
        ),
    )
    prompt = ("lorem ipsum dolor sit amet " * (args.prompt_bytes // 27 + 1))[: args.prompt_bytes]
    body = run_dir / "request.json"
    body.write_bytes(orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}))
    print(
        "| offered | sent req/s | 200 | 429 (of which EPP) | 5xx (504) | client errors "
        "| p50 / p99 200 (ms) | p50 / p99 429 (ms) | EPP CPU ms / request | load average |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    flood_headers = (f"{OBJECTIVE_HEADER}: {args.flood_objective}",) if args.flood_objective else ()
    critical_headers = {"content-type": "application/json", OBJECTIVE_HEADER: args.critical_objective}
    critical_rows: list[str] = []
    async with Stack(config) as stack:
        url = stack.gateway_url + "/v1/completions"
        counters = Counters(stack)
        await asyncio.to_thread(ramp_point, url, 50, 1.0, prompt, 1)  # warm up
        for multiplier in args.rates:
            rate = args.base * multiplier
            cpu, answers, began = counters.cpu_seconds(), await counters.epp_answers(), time.perf_counter()
            if args.loadgen == "h2load":
                log = run_dir / f"h2load-{multiplier:g}x.log"
                flood = h2load_point(url, rate, args.seconds, body, args.clients, log, flood_headers)
                if args.critical_rate:
                    critical_body = body.read_bytes()
                    stream = steady(url, args.critical_rate, args.seconds, critical_body, critical_headers)
                    (results, sent), critical = await asyncio.gather(flood, stream)
                    critical_rows.append(critical_row(f"{multiplier:g}x", critical))
                else:
                    results, sent = await flood
            else:
                results = await asyncio.to_thread(ramp_point, url, rate, args.seconds, prompt, args.workers)
                sent = len(results) / (time.perf_counter() - began)
            cpu = counters.cpu_seconds() - cpu
            answers = await counters.epp_answers() - answers
            statuses = Counter(status for status, _ in results)
            ok = [t for s, t in results if s == 200]
            shed = [t for s, t in results if s == 429]
            fivexx = sum(n for s, n in statuses.items() if s >= 500)
            print(
                f"| {multiplier:g}x = {rate:g} req/s | {sent:.0f} | {len(ok)} | {len(shed)} ({answers}) | "
                f"{fivexx} ({statuses.get(504, 0)}) | {statuses.get(-1, 0)} | {ms(ok, 50)} / {ms(ok, 99)} | "
                f"{ms(shed, 50)} / {ms(shed, 99)} | {cpu * 1e3 / max(len(results), 1):.2f} | "
                f"{os.getloadavg()[0]:.1f} |",
                flush=True,
            )
            await asyncio.sleep(2)  # let the EPP's queues drain between rates
        print(f"\nEnvoy's connections to the EPP: {await counters.epp_connection()}")
    if critical_rows:
        print(f"\n{args.critical_objective} at {args.critical_rate:g} req/s beside the flood:\n")
        print("| flood | sent | 200 (share) | 429 quota | 429 EPP | other | p50 / p90 / p99 200 (ms) |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(critical_rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=float, default=400.0, help="1x: req/s one EPP process serves")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 1, 2, 5])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sims", type=int, default=2)
    parser.add_argument("--loadgen", choices=("h2load", "python"), default="python")
    parser.add_argument("--workers", type=int, default=2, help="python: load generator processes")
    parser.add_argument("--clients", type=int, default=32, help="h2load: HTTP/2 connections")
    parser.add_argument("--prompt-bytes", type=int, default=4096)
    parser.add_argument("--config-file", type=Path)
    parser.add_argument("--rate-limit", type=int, default=0, help="Envoy's local rate limit (req/s; 0: none)")
    parser.add_argument(
        "--adaptive-concurrency",
        action="store_true",
        help="Envoy's adaptive concurrency filter before ext_proc",
    )
    parser.add_argument(
        "--adaptive-concurrency-latency",
        metavar="DURATION",
        help="the same with this fixed minRTT (a latency target, e.g. 0.1s) instead of measuring it",
    )
    parser.add_argument(
        "--admission-control",
        type=float,
        default=0.0,
        metavar="AGGRESSION",
        help="Envoy's admission control before ext_proc, fed by the EPP's 429s (0: off)",
    )
    parser.add_argument(
        "--quota-from-epp",
        action="store_true",
        help="Envoy's rate_limit_quota filter before ext_proc, its bucket assigned by the EPP (as epp run's)",
    )
    parser.add_argument("--objectives-file", type=Path, help="InferenceObjectives for the EPP")
    parser.add_argument(
        "--quota-by-objective",
        action="store_true",
        help="with --quota-from-epp: a quota bucket per objective of --objectives-file (else one bucket)",
    )
    parser.add_argument("--flood-objective", help="h2load: the flood's objective header (default: none)")
    parser.add_argument(
        "--critical-rate", type=float, default=0.0, help="req/s of a steady stream beside the flood (0: none)"
    )
    parser.add_argument("--critical-objective", default="critical", help="that stream's objective header")
    parser.add_argument("--epp-arg", action="append", default=[], help="extra `epp serve` flag")
    asyncio.run(main(parser.parse_args()))
