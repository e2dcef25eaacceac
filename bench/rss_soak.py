"""Does the EPP's resident memory level off under a long run of distinct prompts?

Envoy + `epp serve` + simulators on 127.0.0.1 (as `epp run --sims 4` starts them), then N
non-streamed completions with distinct 2-8 KB prompts (a unique number first, so no two share a
prefix block), paced at --rate over keep-alive connections. Every --every requests it prints the
ext_proc server's VmRSS, split into anonymous and file-backed pages (/proc/PID/status), and the
growth per request since the previous row and since warm-up (the first row).

`--stream` asks for SSE responses (in the buffered bootstrap the EPP's last reply is then to the
response headers, and Envoy half-closes the stream when the response ends). `--body-mode
full-duplex` runs Envoy as GIE's contract has it (every response chunk through the EPP).
`--target reference` sends the same load through Envoy's `reference` listener to
epp.bench.minimal_extproc instead (a grpc.aio ext_proc server that only answers, with the EPP's
TLS). `--same-prompt` sends one prompt throughout.
Environment variables (MALLOC_ARENA_MAX, LD_PRELOAD, ...) reach every process the stack starts.

    .venv/bin/python bench/rss_soak.py --requests 300000 --rate 300 --every 25000
    .venv/bin/python bench/rss_soak.py --target reference --requests 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from epp.stack.envoy import BODY_MODES, EnvoyOptions
from epp.stack.stack import Stack, StackConfig

MODEL = "sim-model"
WARMUP = 2_000
WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from"]


def memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


class Prompts:
    """Distinct prompts cheaply: a unique number, then a random slice of a fixed random text."""

    def __init__(self, low: int, high: int, same: bool, stream: bool, seed: int = 1) -> None:
        rng = random.Random(seed)
        self._text = " ".join(rng.choice(WORDS) for _ in range(200_000))
        self._rng = rng
        self._low, self._high, self._same, self._stream = low, high, same, stream

    def body(self, i: int) -> bytes:
        if self._same:
            prompt = self._text[: self._low]
        else:
            size = self._rng.randint(self._low, self._high)
            start = self._rng.randrange(len(self._text) - size)
            prompt = f"{i} {self._text[start : start + size]}"
        return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1, "stream": self._stream})


async def send(
    url: str, prompts: Prompts, first: int, count: int, rate: float, concurrency: int
) -> Counter[int]:
    """`count` requests numbered from `first`, started at most `rate` per second, at most
    `concurrency` in flight; their statuses (-1: no response)."""
    statuses: Counter[int] = Counter()
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int) -> None:
            try:
                async with session.post(url, data=prompts.body(i), headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses[-1] += 1
            finally:
                slots.release()

        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        for n in range(count):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(one(first + n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return statuses


def row(
    sent: int, now: dict[str, int], last: dict[str, int], base: dict[str, int], since: int, seconds: float
) -> str:
    def per_request(a: dict[str, int], n: int) -> str:
        return f"{(now['VmRSS'] - a['VmRSS']) * 1024 / n:.0f}" if n else "-"

    return (
        f"| {sent:,} | {now['VmRSS'] / 1024:.1f} | {now['RssAnon'] / 1024:.1f} | {now['RssFile'] / 1024:.1f} "
        f"| {per_request(last, since)} | {per_request(base, sent - WARMUP)} | {seconds:.0f} |"
    )


async def main(args: argparse.Namespace) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="rss-soak-"))
    reference = args.target == "reference"
    config = StackConfig(
        run_dir=run_dir,
        sims=args.sims,
        model=MODEL,
        sim_args=["--time-scale=0.01", "--max-waiting=1000000"],
        epp_args=["--served-header=x-epp-destination", *args.epp_arg],
        reference_ext_proc="epp.bench.minimal_extproc" if reference else None,
        envoy=EnvoyOptions(listen_port=0, admin_port=0, body_mode=args.body_mode),
    )
    prompts = Prompts(args.prompt_min, args.prompt_max, args.same_prompt, args.stream)
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # stop the stack too
    async with Stack(config) as stack:
        server = stack.reference if reference else stack.epp
        assert server is not None and server.process is not None
        pid = server.process.pid
        url = (stack.reference_url if reference else stack.gateway_url) + "/v1/completions"
        allocator = {name: os.environ.get(name, "-") for name in ("MALLOC_ARENA_MAX", "LD_PRELOAD")}
        print(
            f"{args.target} pid {pid}, {args.body_mode}, {args.rate:g} req/s, {allocator}, run dir {run_dir}",
            flush=True,
        )
        statuses = await send(url, prompts, 0, WARMUP, args.rate, args.concurrency)
        base = last = memory(pid)
        began = time.perf_counter()
        print("| requests | VmRSS MB | anon MB | file MB | bytes/request since last | since warm-up | s |")
        print("|---|---|---|---|---|---|---|")
        print(row(WARMUP, base, base, base, 0, 0), flush=True)
        sent = WARMUP
        while sent < args.requests:
            batch = min(args.every, args.requests - sent)
            statuses += await send(url, prompts, sent, batch, args.rate, args.concurrency)
            sent += batch
            now = memory(pid)
            print(row(sent, now, last, base, batch, time.perf_counter() - began), flush=True)
            last = now
        if args.idle:
            await asyncio.sleep(args.idle)
            now = memory(pid)
            print(f"after {args.idle:g} s idle: VmRSS {now['VmRSS'] / 1024:.1f} MB", flush=True)
        print("statuses:", dict(statuses), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=25_000, help="sample RSS every this many requests")
    parser.add_argument("--rate", type=float, default=300.0, help="requests started per second at most")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    parser.add_argument("--sims", type=int, default=4)
    parser.add_argument("--prompt-min", type=int, default=2048)
    parser.add_argument("--prompt-max", type=int, default=8192)
    parser.add_argument(
        "--same-prompt", action="store_true", help="one prompt (--prompt-min bytes) throughout"
    )
    parser.add_argument(
        "--stream", action="store_true", help="streamed (SSE) completions: the EPP skips their chunks"
    )
    parser.add_argument("--target", choices=("epp", "reference"), default="epp")
    parser.add_argument(
        "--body-mode", choices=BODY_MODES, default="buffered", help="Envoy's ext_proc body mode"
    )
    parser.add_argument("--idle", type=float, default=0.0, help="then wait this long and sample once more")
    parser.add_argument("--epp-arg", action="append", default=[], help="extra `epp serve` flag")
    asyncio.run(main(parser.parse_args()))
