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

`--shape` picks the traffic, one shape or several taken in turn (request i gets shape i mod n):
`plain` (the above), `stream` (SSE), `disconnect` (a long SSE stream the client closes after its
first line), `unknown-model` (a new model name and fairness id each request, refused by the simulators with
404),
`bad-body` (a body that is not JSON, or a prompt that is not text: 400 from the EPP), `keys` (a new
fairness id, session id, objective and request id each request: per-key state). `--config-file
bench/configs/soak.yaml` turns on the plugins that keep such state. `--heap` runs the EPP with
tracemalloc (bench/soak_hook) and prints after each round its traced Python heap, the source lines
whose allocations grew most and the object types whose counts grew most (tracemalloc slows the EPP
and adds to its RSS: compare rounds with each other, not with a run without it).
Environment variables (MALLOC_ARENA_MAX, LD_PRELOAD, ...) reach every process the stack starts.

    .venv/bin/python bench/rss_soak.py --requests 300000 --rate 300 --every 25000
    .venv/bin/python bench/rss_soak.py --target reference --requests 100000
    make soak   # the mixed shapes with --heap, rounds of 5,000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
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


SHAPES = ("plain", "stream", "disconnect", "unknown-model", "bad-body", "keys")
HOOK_DIR = Path(__file__).resolve().parent / "soak_hook"


class Prompts:
    """Distinct prompts cheaply: a unique number, then a random slice of a fixed random text."""

    def __init__(self, low: int, high: int, same: bool, seed: int = 1) -> None:
        rng = random.Random(seed)
        self._text = " ".join(rng.choice(WORDS) for _ in range(200_000))
        self._rng = rng
        self._low, self._high, self._same = low, high, same

    def prompt(self, i: int) -> str:
        if self._same:
            return self._text[: self._low]
        size = self._rng.randint(self._low, self._high)
        start = self._rng.randrange(len(self._text) - size)
        return f"{i} {self._text[start : start + size]}"


Request = tuple[bytes, dict[str, str], bool]  # body, headers, disconnect after the first line


class Traffic:
    """Request i of the run, in the shape its turn gives it."""

    def __init__(self, prompts: Prompts, shapes: list[str]) -> None:
        self._prompts = prompts
        self._shapes = shapes

    def request(self, i: int) -> Request:
        shape = self._shapes[i % len(self._shapes)]
        headers = {"content-type": "application/json"}
        body: dict[str, object] = {"model": MODEL, "prompt": self._prompts.prompt(i), "max_tokens": 1}
        if shape == "stream":
            body["stream"] = True
        elif shape == "disconnect":
            body |= {"stream": True, "max_tokens": 2000}
        elif shape == "unknown-model":  # and a new fairness id: the two label dimensions together
            body["model"] = f"adapter-{i}"
            headers["x-gateway-inference-fairness-id"] = f"tenant-u{i}"
        elif shape == "bad-body":
            return (
                (b"{not json %d" % i if i % 2 else orjson.dumps({"model": MODEL, "prompt": i})),
                headers,
                False,
            )
        elif shape == "keys":
            headers |= {
                "x-gateway-inference-fairness-id": f"tenant-{i}",
                "x-session-id": f"session-{i}",
                "x-claude-code-session-id": f"agent-{i}",
                "x-gateway-inference-objective": f"objective-{i}",
                "x-request-id": f"soak-{i}",
            }
        return orjson.dumps(body), headers, shape == "disconnect"


async def send(
    url: str, traffic: Traffic, first: int, count: int, rate: float, concurrency: int
) -> Counter[int | str]:
    """`count` requests numbered from `first`, started at most `rate` per second, at most
    `concurrency` in flight; their statuses (-1: no response; "closed": the client's disconnect)."""
    statuses: Counter[int | str] = Counter()
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int) -> None:
            body, headers, disconnect = traffic.request(i)
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    if disconnect and response.status == 200:
                        await response.content.readline()
                        response.close()  # drops the connection mid-stream
                        statuses["closed"] += 1
                    else:
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


async def series(url: str) -> int:
    """Samples on a /metrics page (its lines that are not comments): grows with label children."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


class Heap:
    """The EPP's Python heap through bench/soak_hook: SIGUSR2, then read what it wrote."""

    def __init__(self, pid: int, run_dir: Path) -> None:
        self._pid, self._dir = pid, run_dir
        self._rounds = itertools.count()
        self._last: tuple[tracemalloc.Snapshot, Counter[str]] | None = None

    async def sample(self) -> int:
        """Ask for a dump, wait for it (bounded), print what grew since the last; the traced bytes."""
        n = next(self._rounds)
        done = self._dir / f"heap-{n}.json"
        os.kill(self._pid, signal.SIGUSR2)
        for _ in range(600):
            if done.exists():
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"no heap dump from pid {self._pid} in 60 s")
        dumped = json.loads(done.read_text())
        snapshot = tracemalloc.Snapshot.load(str(self._dir / f"heap-{n}.snapshot")).filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
        )
        types: Counter[str] = Counter(dumped["types"])
        if self._last is not None:
            last_snapshot, last_types = self._last
            grown = [d for d in snapshot.compare_to(last_snapshot, "lineno") if d.size_diff > 0][:8]
            for d in grown:
                frame = d.traceback[0]
                where = f"{frame.filename}:{frame.lineno}"
                print(f"    {d.size_diff / 1024:+8.1f} KiB {d.count_diff:+7d} blocks  {where}")
            types.subtract(last_types)
            growth = ", ".join(f"{name} {count:+d}" for name, count in types.most_common(8) if count > 0)
            print(f"    objects: {growth or 'none grew'}", flush=True)
        self._last = (snapshot, Counter(dumped["types"]))
        return int(dumped["traced"])


def row(
    sent: int,
    now: dict[str, int],
    last: dict[str, int],
    base: dict[str, int],
    since: int,
    seconds: float,
    traced: int | None,
    samples: int | None,
) -> str:
    def per_request(a: dict[str, int], n: int) -> str:
        return f"{(now['VmRSS'] - a['VmRSS']) * 1024 / n:.0f}" if n else "-"

    return (
        f"| {sent:,} | {now['VmRSS'] / 1024:.1f} | {now['RssAnon'] / 1024:.1f} | {now['RssFile'] / 1024:.1f} "
        f"| {per_request(last, since)} | {per_request(base, sent - WARMUP)} "
        f"| {'-' if traced is None else f'{traced / 2**20:.2f}'} | {'-' if samples is None else samples} "
        f"| {os.getloadavg()[0]:.1f} | {seconds:.0f} |"
    )


async def main(args: argparse.Namespace) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="rss-soak-"))
    reference = args.target == "reference"
    shapes = [name for shape in args.shape for name in (SHAPES if shape == "mix" else [shape])]
    if args.stream:
        shapes = ["stream" if name == "plain" else name for name in shapes]
    if args.heap:  # the stack's processes inherit this environment
        os.environ["EPP_SOAK_HEAP_DIR"] = str(run_dir)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(HOOK_DIR), os.environ.get("PYTHONPATH")])
        )
    config = StackConfig(
        run_dir=run_dir,
        sims=args.sims,
        model=MODEL,
        sim_args=["--time-scale=0.01", "--max-waiting=1000000"],
        epp_args=["--served-header=x-epp-destination", *args.epp_arg],
        # ${SIM_URL} (token-producer's render API) is known once the simulators run
        epp_config_template=args.config_template,
        reference_ext_proc="epp.bench.minimal_extproc" if reference else None,
        envoy=EnvoyOptions(listen_port=0, admin_port=0, body_mode=args.body_mode),
    )
    traffic = Traffic(Prompts(args.prompt_min, args.prompt_max, args.same_prompt), shapes)
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # stop the stack too
    async with Stack(config) as stack:
        server = stack.reference if reference else stack.epp
        assert server is not None and server.process is not None
        pid = server.process.pid
        url = (stack.reference_url if reference else stack.gateway_url) + "/v1/completions"
        heap: Callable[[], Awaitable[int]] | None = Heap(pid, run_dir).sample if args.heap else None
        page = None if reference else stack.view_url + "/metrics"
        allocator = {name: os.environ.get(name, "-") for name in ("MALLOC_ARENA_MAX", "LD_PRELOAD")}
        print(
            f"{args.target} pid {pid}, {args.body_mode}, shapes {','.join(shapes)}, {args.rate:g} req/s, "
            f"{allocator}, run dir {run_dir}",
            flush=True,
        )
        statuses = await send(url, traffic, 0, WARMUP, args.rate, args.concurrency)
        traced = None if heap is None else await heap()
        base = last = memory(pid)
        began = time.perf_counter()
        print(
            "| requests | VmRSS MB | anon MB | file MB | bytes/request since last | since warm-up "
            "| traced MiB | /metrics samples | load | s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        samples = None if page is None else await series(page)
        print(row(WARMUP, base, base, base, 0, 0, traced, samples), flush=True)
        sent = WARMUP
        while sent < args.requests:
            batch = min(args.every, args.requests - sent)
            statuses += await send(url, traffic, sent, batch, args.rate, args.concurrency)
            sent += batch
            traced = None if heap is None else await heap()
            now = memory(pid)
            samples = None if page is None else await series(page)
            print(row(sent, now, last, base, batch, time.perf_counter() - began, traced, samples), flush=True)
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
        "--stream", action="store_true", help="the plain shape streamed (SSE): the EPP skips their chunks"
    )
    parser.add_argument(
        "--shape", action="append", choices=(*SHAPES, "mix"), help="traffic shape, repeatable (default plain)"
    )
    parser.add_argument("--config-file", help="the EPP's EndpointPickerConfig (bench/configs/soak.yaml)")
    parser.add_argument("--heap", action="store_true", help="trace the EPP's Python heap (bench/soak_hook)")
    parser.add_argument("--target", choices=("epp", "reference"), default="epp")
    parser.add_argument(
        "--body-mode", choices=BODY_MODES, default="buffered", help="Envoy's ext_proc body mode"
    )
    parser.add_argument("--idle", type=float, default=0.0, help="then wait this long and sample once more")
    parser.add_argument("--epp-arg", action="append", default=[], help="extra `epp serve` flag")
    arguments = parser.parse_args()
    arguments.shape = arguments.shape or ["plain"]
    arguments.config_template = Path(arguments.config_file).read_text() if arguments.config_file else ""
    asyncio.run(main(arguments))
