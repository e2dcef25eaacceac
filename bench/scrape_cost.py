"""CPU cost of scraping model-server /metrics: N endpoints at the default 50 ms interval.

A child process serves a fixed vLLM-like page (gauges plus histograms, about the size a real vLLM
replica serves) on N ports of 127.0.0.1. Each variant then runs in its own process against the
same servers, in turn, for a few rounds, and reports its own CPU per scrape:

- `socket-floor`: blocking sockets and epoll, no event loop, no parsing: the kernel's share;
- `aiohttp-get`: aiohttp's client GETs each page on a keep-alive session and reads the body, no
  parsing (a task per endpoint, as a plain Python scraper would do it);
- `baseline`: the EPP's `MetricsScraper` as of a git revision (`--baseline`, default `main`);
- `this tree`: the `MetricsScraper` of the working tree.

Each scraper variant also reports the in-process cost of reading one page (extracting the
configured series and mapping them to endpoint metrics, no I/O), next to prometheus_client's text
parser on the same page (a full parse, the reference the extractor must agree with). Progress
goes to stderr. Run:

    .venv/bin/python bench/scrape_cost.py --endpoints 100 --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

INTERVAL = 0.05  # GIE's --refresh-metrics-interval, the EPP's default
ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import asyncio, json, sys

def page() -> bytes:
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
            lines.append(f'{name}_bucket{{le="{0.001 * 2 ** b:.4g}",model_name="m"}} {b * 17}.0')
        lines.append(f'{name}_bucket{{le="+Inf",model_name="m"}} 510.0')
        lines.append(f'{name}_count{{model_name="m"}} 510.0')
        lines.append(f'{name}_sum{{model_name="m"}} 123.4')
    return ("\n".join(lines) + "\n").encode()

class Static(asyncio.Protocol):
    # Answers every request on the connection with the same response (the cheapest server
    # Python has, so that more of the schedule is met on a small machine).
    response = b""
    def connection_made(self, transport):
        self.transport, self.pending = transport, b""
    def data_received(self, data):
        self.pending += data
        requests = self.pending.count(b"\r\n\r\n")
        if requests:
            self.pending = self.pending[self.pending.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(self.response * requests)

async def main(count: int) -> None:
    body = page()
    Static.response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(count):
        server = await loop.create_server(Static, "127.0.0.1", 0)
        ports.append(server.sockets[0].getsockname()[1])
    print(json.dumps({"ports": ports, "page": body.decode()}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


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


def page_read_cost(page: str) -> dict[str, float]:
    """µs to read one page in process: this process's extractor + engine mapping, and
    prometheus_client's full text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    from epp.datalayer.engines import BUILTIN_ENGINES
    from epp.datalayer.promtext import Extractor

    engine = BUILTIN_ENGINES["vllm"]
    extractor = Extractor(engine.names())
    body = page.encode()

    def epp() -> None:
        engine.read(extractor.extract_bytes(body), 0.0)

    def reference() -> None:
        for _ in text_string_to_metric_families(page):
            pass

    def best(function: object, number: int) -> float:
        runs = timeit.repeat(function, number=number, repeat=5, timer=time.process_time)  # type: ignore[arg-type]
        return min(runs) / number * 1e6

    return {"read_us": best(epp, 2000), "reference_us": best(reference, 20)}


def child(variant: str, info: dict[str, object], seconds: float) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    ports = info["ports"]
    assert isinstance(ports, list)
    costs: dict[str, float] = {}
    if variant == "aiohttp-get":
        share, scrapes, failures = asyncio.run(scrape_with_aiohttp(ports, seconds))
    elif variant == "socket-floor":
        share, scrapes, failures = scrape_with_sockets(ports, seconds)
    else:
        share, scrapes, failures = asyncio.run(scrape_with_epp(ports, seconds))
        costs = page_read_cost(str(info["page"]))
    print(json.dumps({"share": share, "scrapes": scrapes, "failures": failures, **costs}))


def checkout(revision: str, into: str) -> str:
    """The `epp` package as of `revision`, unpacked into a temporary directory."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "epp"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def run_variant(variant: str, pythonpath: str, info_file: str, seconds: float) -> dict[str, float]:
    environment = {**os.environ, "PYTHONPATH": pythonpath}
    command = [sys.executable, __file__, "--child", variant, "--info", info_file, "--seconds", str(seconds)]
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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--info", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(Path(args.info).read_text()), args.seconds)
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.endpoints)], stdout=subprocess.PIPE, text=True
    )
    with tempfile.TemporaryDirectory() as scratch:
        try:
            assert server.stdout is not None
            info_file = os.path.join(scratch, "info.json")
            Path(info_file).write_text(server.stdout.readline())
            baseline = checkout(args.baseline, scratch)
            variants = {
                "socket-floor": str(ROOT),
                "aiohttp-get": str(ROOT),
                f"baseline ({args.baseline})": baseline,
                "this tree": str(ROOT),
            }
            results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, pythonpath in variants.items():
                    kind = name if name in ("socket-floor", "aiohttp-get") else "epp"
                    results[name].append(run_variant(kind, pythonpath, info_file, args.seconds))
                    print(name, results[name][-1], file=sys.stderr)
        finally:
            server.terminate()
            server.wait()
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> None:
    expected = args.endpoints * args.seconds / INTERVAL
    print(
        f"endpoints={args.endpoints} interval={INTERVAL * 1000:.0f}ms seconds={args.seconds} "
        f"rounds={args.rounds} (µs of CPU per scrape, each round; median)"
    )
    for name, runs in results.items():
        per_scrape = [r["share"] / max(r["scrapes"] / args.seconds, 1e-9) * 1e6 for r in runs]
        schedule = statistics.median(r["scrapes"] / expected for r in runs)
        rounds = " / ".join(f"{u:.0f}" for u in per_scrape)
        line = (
            f"{name:>18}: {rounds} µs; median {statistics.median(per_scrape):.0f} µs, "
            f"{statistics.median(r['share'] for r in runs):.1%} of a core at {schedule:.0%} of schedule, "
            f"failures {sum(int(r['failures']) for r in runs)}"
        )
        if "read_us" in runs[0]:
            line += (
                f"; page read in process {statistics.median(r['read_us'] for r in runs):.1f} µs "
                f"(prometheus_client parser {statistics.median(r['reference_us'] for r in runs):.0f} µs)"
            )
        print(line)


if __name__ == "__main__":
    main()
