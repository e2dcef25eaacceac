"""CPU cost of scraping model-server /metrics: N endpoints at the default 50 ms interval.

A child process serves a vLLM-like page (`--page`: a synthetic 27 KB page with the wanted series
first, or one laid out as vLLM 0.11 serves it, 42 KB, with or without the LoRA gauge) on N ports
of 127.0.0.1: the same page every time; with `--changing process` only the process CPU counter
above the wanted series changing (and with it their place), as an idle vLLM's page does; with
`--changing` the wanted gauges' values changing too, as a busy server's. Each variant then runs in
its own process against the same servers, in turn, for a few rounds, and reports its own CPU per
scrape:

- `socket-floor`: blocking sockets and epoll, no event loop, no parsing: the kernel's share;
- `aiohttp-get`: aiohttp's client GETs each page on a keep-alive session and reads the body, no
  parsing (a task per endpoint, as a plain Python scraper would do it);
- `baseline`: the EPP's `MetricsScraper` as of a git revision (`--baseline`, default `main`);
- `this tree`: the `MetricsScraper` of the working tree;
- with `--profile`, `no-answer` and `no-read`: this tree's scraper only counting each answer, and
  handling it (status, health, timers) without reading the page.

`--loop uvloop` runs the event-loop variants (all but `socket-floor` and the baseline, which is
asyncio's as `main` ran it) on uvloop; `--loop asyncio --loop uvloop` runs each on both, in turn
within every round, so the two loops are compared on the same servers minutes apart at most.

Each scraper variant also reports the in-process cost of handling one answer (extracting the
configured series, mapping them to endpoint metrics and setting them on the endpoint, no I/O;
then the same with the HTTP client's part: the GET started and the response handed to its protocol),
next to prometheus_client's text parser on the same page (a full parse, the reference the
extractor must agree with). Progress goes to stderr. Run:

    .venv/bin/python bench/scrape_cost.py --endpoints 100 --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

INTERVAL = 0.05  # GIE's --refresh-metrics-interval, the EPP's default
ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import asyncio, json, sys

class Static(asyncio.Protocol):
    # Answers the requests on a connection with the responses in turn (the cheapest server
    # Python has, so that more of the schedule is met on a small machine).
    responses = [b""]
    def connection_made(self, transport):
        self.transport, self.pending, self.turn = transport, b"", 0
    def data_received(self, data):
        self.pending += data
        requests = self.pending.count(b"\r\n\r\n")
        if requests:
            self.pending = self.pending[self.pending.rfind(b"\r\n\r\n") + 4:]
            count = len(self.responses)
            answers = [self.responses[(self.turn + i) % count] for i in range(requests)]
            self.turn += requests
            self.transport.write(b"".join(answers))

async def main(count: int, page_files: list[str]) -> None:
    bodies = []
    for page_file in page_files:
        with open(page_file, "rb") as file:
            bodies.append(file.read())
    Static.responses = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
        for body in bodies
    ]
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(count):
        server = await loop.create_server(Static, "127.0.0.1", 0)
        ports.append(server.sockets[0].getsockname()[1])
    print(json.dumps({"ports": ports, "pages": [body.decode() for body in bodies]}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), sys.argv[2:]))
"""

# The values the wanted gauges take in turn with `--changing` (different lengths, so what follows
# them on the page moves too), and the process counter that changes on every page of a real server.
CHANGING = {
    b"vllm:num_requests_running": (b"12.0", b"7.0", b"131.0", b"0.0", b"12.0", b"9.0", b"64.0"),
    b"vllm:num_requests_waiting": (b"3.0", b"0.0", b"18.0", b"0.0", b"4.0", b"3.0", b"102.0"),
    b"vllm:kv_cache_usage_perc": (b"0.42", b"0.3719", b"0.9", b"0.0", b"0.4375", b"0.42", b"0.87109375"),
    b"process_cpu_seconds_total": (b"1.5", b"1.52", b"1.55", b"1.59", b"1.61", b"1.66", b"1.7"),
}


def changing(page: bytes, which: str = "all") -> list[bytes]:
    """The page as a server serves it scrape after scrape: the values of the `CHANGING` lines in
    turn (`process`: only the process CPU counter's; a name missing from the page is left alone)."""
    lines = page.split(b"\n")
    pages = []
    names = {n: v for n, v in CHANGING.items() if which == "all" or n.startswith(b"process_")}
    for turn in range(len(next(iter(CHANGING.values())))):
        changed = []
        for line in lines:
            for name, values in names.items():
                if line.startswith(name) and line[len(name) : len(name) + 1] in (b"{", b" "):
                    line = line[: line.rindex(b" ") + 1] + values[turn]
            changed.append(line)
        pages.append(b"\n".join(changed))
    return pages


def synthetic_page() -> bytes:
    """27 KB: the five series vLLM's extractor reads first, then twelve 30-bucket histograms."""
    lines = [
        'vllm:num_requests_running{model_name="m"} 12.0',
        'vllm:num_requests_waiting{model_name="m"} 3.0',
        'vllm:kv_cache_usage_perc{model_name="m"} 0.42',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",waiting_lora_adapters=""} 1.7e9',
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="26000",model_name="m"} 1.0',
    ]
    for h in range(12):
        name = f"vllm:histogram_{h}_seconds"
        lines.append(f"# HELP {name} a histogram")
        lines.append(f"# TYPE {name} histogram")
        for b in range(30):
            lines.append(f'{name}_bucket{{le="{0.001 * 2**b:.4g}",model_name="m"}} {b * 17}.0')
        lines.append(f'{name}_bucket{{le="+Inf",model_name="m"}} 510.0')
        lines.append(f'{name}_count{{model_name="m"}} 510.0')
        lines.append(f'{name}_sum{{model_name="m"}} 123.4')
    return ("\n".join(lines) + "\n").encode()


def vllm_page(lora: bool) -> bytes:
    """42 KB laid out as vLLM 0.11 serves it: prometheus_client's process and GC collectors, the
    engine's gauges, counters and histograms (vLLM's buckets, `_created` series off), the HTTP
    instrumentator's families; the LoRA gauge only with `lora`, as vLLM serves it only then."""
    import prometheus_client as p

    p.disable_created_metrics()
    registry = p.CollectorRegistry()
    p.GCCollector(registry=registry)
    p.PlatformCollector(registry=registry)
    p.ProcessCollector(registry=registry)
    names, model = ["model_name", "engine"], ("meta-llama/Llama-3.1-8B-Instruct", "0")

    def gauge(name: str, value: float) -> None:
        p.Gauge(f"vllm:{name}", f"{name} now.", names, registry=registry).labels(*model).set(value)

    gauge("num_requests_running", 12)
    gauge("num_requests_waiting", 3)
    gauge("engine_sleep_state", 1)
    gauge("kv_cache_usage_perc", 0.42)
    for name in ("prefix_cache_queries", "prefix_cache_hits", "num_preemptions", "prompt_tokens"):
        p.Counter(f"vllm:{name}", f"{name} so far.", names, registry=registry).labels(*model).inc(12345)
    success = p.Counter(
        "vllm:request_success", "Finished requests.", [*names, "finished_reason"], registry=registry
    )
    for reason in ("stop", "length", "abort", "error"):
        success.labels(*model, reason).inc(100)
    tokens = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]
    latency = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680]
    fine = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80]
    histograms = {
        "request_prompt_tokens": tokens,
        "request_generation_tokens": tokens,
        "iteration_tokens_total": [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        "request_max_num_generation_tokens": tokens,
        "request_params_n": [1, 2, 5, 10, 20],
        "request_params_max_tokens": tokens,
        "time_to_first_token_seconds": fine,
        "time_per_output_token_seconds": fine,
        "inter_token_latency_seconds": fine,
        **{f"{phase}_seconds": latency for phase in ("e2e_request_latency", "request_queue_time")},
        **{f"request_{phase}_time_seconds": latency for phase in ("inference", "prefill", "decode")},
    }
    for name, buckets in histograms.items():
        series = p.Histogram(f"vllm:{name}", f"{name}.", names, buckets=buckets, registry=registry)
        for bound in buckets[::3]:
            series.labels(*model).observe(bound * 0.9)
    if lora:
        p.Gauge(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            registry=registry,
        ).labels("4", "a,b", "").set(1.7e9)
    config = {"block_size": "16", "cache_dtype": "auto", "enable_prefix_caching": "True"}
    config |= {"gpu_memory_utilization": "0.9", "num_gpu_blocks": "26000", "swap_space": "4"}
    info = p.Gauge("vllm:cache_config_info", "CacheConfig.", list(config), registry=registry)
    info.labels(**config).set(1)
    handlers = ("/v1/chat/completions", "/v1/completions", "/metrics", "/health")
    requests = p.Counter("http_requests", "Requests.", ["handler", "method", "status"], registry=registry)
    sizes = p.Summary("http_request_size_bytes", "Request sizes.", ["handler"], registry=registry)
    durations = p.Histogram(
        "http_request_duration_seconds",
        "Latency.",
        ["handler", "method"],
        buckets=[0.1, 0.5, 1],
        registry=registry,
    )
    for handler in handlers:
        requests.labels(handler, "POST", "2xx").inc(1000)
        sizes.labels(handler).observe(1000)
        durations.labels(handler, "POST").observe(0.3)
    highr = p.Histogram("http_request_duration_highr_seconds", "Latency.", buckets=fine, registry=registry)
    highr.observe(0.2)
    return p.generate_latest(registry)


PAGES = {
    "synthetic": synthetic_page,
    "vllm": lambda: vllm_page(lora=False),
    "vllm-lora": lambda: vllm_page(lora=True),
}


async def scrape_with_epp(ports: list[int], seconds: float) -> tuple[float, int, int]:
    from epp.datalayer.scraper import MetricsScraper
    from epp.datastore import Datastore, EndpointSpec

    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=INTERVAL)
    await scraper.start()
    for i, port in enumerate(ports):
        datastore.upsert(EndpointSpec(f"e{i}", "127.0.0.1", port))
    await asyncio.sleep(1.0)  # warm-up: connections opened, first scrapes done
    cpu0, wall0, scrapes0 = time.process_time(), time.monotonic(), scraper.scrapes
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    scrapes, failures = scraper.scrapes - scrapes0, scraper.failures
    await scraper.stop()
    return cpu / wall, scrapes, failures


async def scrape_with_aiohttp(ports: list[int], seconds: float) -> tuple[float, int, int]:
    import aiohttp

    counts = {"scrapes": 0, "failures": 0}

    async def poll(session: aiohttp.ClientSession, url: str) -> None:
        while True:
            started = time.monotonic()
            try:
                async with session.get(url) as response:
                    await response.read()
                counts["scrapes"] += 1
            except aiohttp.ClientError:
                counts["failures"] += 1
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(poll(session, f"http://127.0.0.1:{p}/metrics")) for p in ports]
        await asyncio.sleep(1.0)
        cpu0, wall0, scrapes0 = time.process_time(), time.monotonic(), counts["scrapes"]
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return cpu / wall, counts["scrapes"] - scrapes0, counts["failures"]


def scrape_with_sockets(ports: list[int], seconds: float) -> tuple[float, int, int]:
    """The I/O floor: blocking sockets and epoll, no event loop, no parsing. Every interval each
    connection sends its GET, then every response is read whole (by its Content-Length)."""
    connections = [socket.create_connection(("127.0.0.1", port)) for port in ports]
    selector = selectors.DefaultSelector()
    for connection in connections:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ, bytearray())
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    view = memoryview(bytearray(1 << 16))
    scrapes, measured_from, cpu0, wall0 = 0, time.monotonic() + 1.0, 0.0, 0.0
    next_tick = time.monotonic()
    while True:
        now = time.monotonic()
        if cpu0 == 0.0 and now >= measured_from:
            cpu0, wall0, scrapes = time.process_time(), now, 0
        if cpu0 and now - wall0 >= seconds:
            break
        for connection in connections:
            connection.send(request)
        pending = len(connections)
        while pending:
            for key, _ in selector.select():
                buffer = key.data
                buffer += view[: key.fileobj.recv_into(view)]  # type: ignore[union-attr]
                head = buffer.find(b"\r\n\r\n")
                if head >= 0:
                    length = int(buffer[buffer.find(b"Content-Length: ") + 16 : head].split(b"\r")[0])
                    if len(buffer) >= head + 4 + length:
                        del buffer[:]
                        pending -= 1
                        scrapes += 1
        next_tick += INTERVAL
        time.sleep(max(0.0, next_tick - time.monotonic()))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    for connection in connections:
        connection.close()
    return cpu / wall, scrapes, 0


def page_read_cost(pages: list[str]) -> dict[str, float]:
    """µs to handle one answer in process, the pages in turn, as this process's scraper does
    (find the series, map them to endpoint metrics, set them on the endpoint; no I/O), and
    prometheus_client's full text parser on the first page."""
    from prometheus_client.parser import text_string_to_metric_families

    from epp.datalayer.engines import BUILTIN_ENGINES
    from epp.datalayer.promtext import Extractor
    from epp.datalayer.scraper import MetricsScraper, _Target
    from epp.datastore import Datastore, Endpoint, EndpointSpec

    engine = BUILTIN_ENGINES["vllm"]
    scraper = MetricsScraper(Datastore())
    endpoint = Endpoint(EndpointSpec("e", "127.0.0.1", 1))
    target = scraper._targets["e"] = _Target(endpoint, None, engine, Extractor(engine.names()), 0)  # type: ignore[arg-type]
    bodies = itertools.cycle([page.encode() for page in pages])

    def epp() -> None:
        scraper._answered(target, (200, next(bodies)))

    client = _with_client(scraper, engine, pages)

    def reference() -> None:
        for _ in text_string_to_metric_families(pages[0]):
            pass

    def best(function: object, number: int) -> float:
        runs = timeit.repeat(function, number=number, repeat=5, timer=time.process_time)  # type: ignore[arg-type]
        return min(runs) / number * 1e6

    return {"read_us": best(epp, 2000), "client_us": best(client, 2000), "reference_us": best(reference, 20)}


def _with_client(scraper: Any, engine: Any, pages: list[str]) -> Callable[[], None]:
    """One answer handled whole, the HTTP client's part too: the GET started (`_begin`), the
    response put in the connection's read buffer as a socket read would, `buffer_updated`, and
    the scraper's handling; the pages in turn, each with the headers a server sends (its
    Content-Length changing with the page). A transport that only swallows the GET."""
    import functools

    from epp.datalayer import fetch
    from epp.datalayer.promtext import Extractor
    from epp.datalayer.scraper import _Target
    from epp.datastore import Endpoint, EndpointSpec

    class Transport:
        def write(self, data: bytes) -> None:
            pass

        def abort(self) -> None:
            pass

    getter = fetch.KeepAliveGetter("127.0.0.1", 2, "/metrics")
    protocol = getter._protocol = fetch._GetProtocol()
    protocol.transport = Transport()  # type: ignore[assignment]
    endpoint = Endpoint(EndpointSpec("c", "127.0.0.1", 2))
    target = scraper._targets["c"] = _Target(endpoint, getter, engine, Extractor(engine.names()), 0)
    if "answered" in _Target.__slots__:  # bound by the scraper since the fourth round
        target.answered = functools.partial(scraper._answered, target)
    responses = itertools.cycle(
        [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n\r\n"
            % len(page.encode())
            + page.encode()
            for page in pages
        ]
    )
    view = protocol._read_view

    def answer() -> None:
        response = next(responses)
        scraper._begin(target, 0.0)
        view[: len(response)] = response
        protocol.buffer_updated(len(response))

    return answer


def without_reading(variant: str) -> None:
    """The scraper less part of its work, for `--profile`: `no-read` handles each answer but
    does not read the page (status, health and timers only); `no-answer` only counts it."""
    from epp.datalayer import scraper

    if variant == "no-read":
        scraper.MetricsScraper._read = staticmethod(lambda target, page: None)  # type: ignore[method-assign]
        return

    def count(self: scraper.MetricsScraper, target: scraper._Target, result: object) -> None:
        target.sent_at = None
        self.scrapes += 1
        if target.missed:
            self._begin(target, asyncio.get_running_loop().time())

    scraper.MetricsScraper._answered = count  # type: ignore[method-assign,assignment]


def child(variant: str, info: dict[str, object], seconds: float, loop: str) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    ports = info["ports"]
    assert isinstance(ports, list)
    costs: dict[str, float] = {}
    # The loop made here, not by epp.eventloop: the baseline's tree may not have it.
    factory = asyncio.new_event_loop if loop == "asyncio" else __import__("uvloop").new_event_loop
    runner = asyncio.Runner(loop_factory=factory)
    if variant == "aiohttp-get":
        share, scrapes, failures = runner.run(scrape_with_aiohttp(ports, seconds))
    elif variant == "socket-floor":
        share, scrapes, failures = scrape_with_sockets(ports, seconds)
    elif variant in ("no-read", "no-answer"):
        without_reading(variant)
        share, scrapes, failures = runner.run(scrape_with_epp(ports, seconds))
    else:
        share, scrapes, failures = runner.run(scrape_with_epp(ports, seconds))
        pages = info["pages"]
        assert isinstance(pages, list)
        costs = page_read_cost(pages)
    print(json.dumps({"share": share, "scrapes": scrapes, "failures": failures, **costs}))


def checkout(revision: str, into: str) -> str:
    """The `epp` package as of `revision`, unpacked into a temporary directory, with its C
    extensions built as an install builds them (a revision with a C page reader compared without
    it would be compared with its pure-Python fallback)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", revision, "setup.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "epp", *listed], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    if listed:
        print(f"building {revision}'s C extensions", file=sys.stderr)
        subprocess.run(
            [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
            cwd=into,
            check=True,
            capture_output=True,
        )
    return into


def run_variant(variant: str, pythonpath: str, info_file: str, seconds: float, loop: str) -> dict[str, float]:
    arguments = ["--child", variant, "--info", info_file, "--seconds", str(seconds), "--loop", loop]
    return run_child(__file__, pythonpath, arguments)


def run_child(script: str, pythonpath: str, arguments: list[str]) -> dict[str, float]:
    """`script` run with `arguments` against the `epp` package in `pythonpath`: the JSON object
    its last line of output holds."""
    environment = {**os.environ, "PYTHONPATH": pythonpath}
    command = [sys.executable, script, *arguments]
    output = subprocess.run(command, env=environment, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="main", help="git revision of the baseline scraper")
    parser.add_argument(
        "--page",
        choices=sorted(PAGES),
        default="synthetic",
        help="synthetic: the wanted series first, then histograms (27 KB); vllm, vllm-lora: "
        "vLLM 0.11's layout, the wanted series among the rest (42 KB), the LoRA gauge absent or not",
    )
    parser.add_argument(
        "--changing",
        nargs="?",
        const="all",
        choices=("all", "process"),
        help="the wanted gauges' values (and the process CPU counter) change from one answer to the "
        "next, as a busy server's do; `process`: only the process CPU counter, as an idle vLLM's "
        "page; without it every answer is the same page",
    )
    parser.add_argument(
        "--scrapers-only",
        action="store_true",
        help="run only the baseline and this tree (not the socket floor and aiohttp's client)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run this tree's scraper without reading pages, and only counting answers: "
        "what the HTTP client and the event loop cost, and the scraper's bookkeeping",
    )
    parser.add_argument(
        "--loop",
        action="append",
        choices=("asyncio", "uvloop"),
        help="the event loop of the event-loop variants; twice: each variant on both, in turn "
        "(default asyncio)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--info", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(Path(args.info).read_text()), args.seconds, args.loop[0])
        return
    loops = args.loop or ["asyncio"]
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    with tempfile.TemporaryDirectory() as scratch:
        page = PAGES[args.page]()
        page_files = []
        for i, body in enumerate(changing(page, args.changing) if args.changing else [page]):
            page_files.append(os.path.join(scratch, f"page{i}.txt"))
            Path(page_files[-1]).write_bytes(body)
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(args.endpoints), *page_files],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            info_file = os.path.join(scratch, "info.json")
            Path(info_file).write_text(server.stdout.readline())
            variants = variants_to_run(args, loops, checkout(args.baseline, scratch))
            results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, (kind, pythonpath, loop) in variants.items():
                    results[name].append(run_variant(kind, pythonpath, info_file, args.seconds, loop))
                    print(name, results[name][-1], file=sys.stderr)
        finally:
            server.terminate()
            server.wait()
    report(args, results)


def variants_to_run(
    args: argparse.Namespace, loops: list[str], baseline: str
) -> dict[str, tuple[str, str, str]]:
    """name -> (the child's variant, its PYTHONPATH, its event loop), in the order they run."""
    variants = {} if args.scrapers_only else {"socket-floor": ("socket-floor", str(ROOT), "asyncio")}
    variants[f"baseline ({args.baseline})"] = ("epp", baseline, "asyncio")
    on_loop = ([] if args.scrapers_only else ["aiohttp-get"]) + ["this tree"]
    on_loop += ["no-answer", "no-read"] if args.profile else []
    for name in on_loop:
        for loop in loops:
            label = name if loops == ["asyncio"] else f"{name} [{loop}]"
            variants[label] = ("epp" if name == "this tree" else name, str(ROOT), loop)
    return variants


def report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> None:
    expected = args.endpoints * args.seconds / INTERVAL
    print(
        f"endpoints={args.endpoints} page={args.page} changing={args.changing} "
        f"interval={INTERVAL * 1000:.0f}ms "
        f"seconds={args.seconds} rounds={args.rounds} (µs of CPU per scrape, each round; median; "
        "the share of a core measured, at the share of the schedule the page server met, and "
        "projected to the full schedule)"
    )
    for name, runs in results.items():
        per_scrape = [r["share"] / max(r["scrapes"] / args.seconds, 1e-9) * 1e6 for r in runs]
        schedule = statistics.median(r["scrapes"] / expected for r in runs)
        rounds = " / ".join(f"{u:.0f}" for u in per_scrape)
        line = (
            f"{name:>22}: {rounds} µs; median {statistics.median(per_scrape):.0f} µs, "
            f"{statistics.median(r['share'] for r in runs):.1%} of a core at {schedule:.0%} of schedule "
            f"({statistics.median(per_scrape) * 1e-6 * expected / args.seconds:.0%} at 100 %), "
            f"failures {sum(int(r['failures']) for r in runs)}"
        )
        if "read_us" in runs[0]:
            line += (
                f"; answer handled in process {statistics.median(r['read_us'] for r in runs):.1f} µs, "
                f"with the HTTP client {statistics.median(r['client_us'] for r in runs):.1f} µs "
                f"(prometheus_client parser {statistics.median(r['reference_us'] for r in runs):.0f} µs)"
            )
        print(line)


if __name__ == "__main__":
    main()
