"""How long a gzip-encoded /metrics page holds the EPP's event loop while it is scraped.

A child process serves one page gzip-encoded on 127.0.0.1: `--page bomb` (default), newlines
inflating to one byte past the 64 MiB plain body limit (a hostile endpoint's decompression
bomb, about 64 KB on the wire); `--page wanted`, one series the scraper reads repeated to just
under this tree's 4 MiB limit for an inflated page (a hostile page that is read, not refused);
or `--page vllm`, bench/scrape_cost.py's vLLM 0.11 page (42 KB, as a real server would send
it). The EPP's `MetricsScraper` (50 ms interval, its backoff for an endpoint whose scrapes fail)
scrapes it for `--seconds`, once as of `--baseline` (a git revision,
default main) and once as this tree, each in its own process, `--rounds` times in turn. A probe
task sleeping 1 ms at a time records how late each wake-up is: the latest is the longest the loop
was held (a request being routed then would have waited as long). Reported per variant: scrapes
answered, the probe's worst and 99th-percentile lateness, and the process's CPU (every thread)
per scrape answered."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scrape_cost import checkout, run_child, vllm_page

PLAIN_BODY_LIMIT = 64 * 1024 * 1024
INFLATED_LIMIT = 4 * 1024 * 1024  # this tree's, for gzip bodies

SERVER = r"""
import asyncio, sys

class Gzipped(asyncio.Protocol):
    response = b""
    def connection_made(self, transport):
        self.transport, self.pending = transport, b""
    def data_received(self, data):
        self.pending += data
        while b"\r\n\r\n" in self.pending:
            _, _, self.pending = self.pending.partition(b"\r\n\r\n")
            self.transport.write(self.response)

async def main(page_file):
    with open(page_file, "rb") as file:
        body = file.read()
    Gzipped.response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    server = await asyncio.get_running_loop().create_server(Gzipped, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
"""


async def scrape(port: int, seconds: float) -> dict[str, float]:
    from epp.datalayer.scraper import MetricsScraper
    from epp.datastore import Datastore, EndpointSpec

    lateness: list[float] = []
    loop = asyncio.get_running_loop()

    async def probe() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            lateness.append(loop.time() - before - 0.001)

    datastore = Datastore()
    scraper = MetricsScraper(datastore)
    probing = loop.create_task(probe())
    cpu = time.process_time()
    await scraper.start()
    datastore.upsert(EndpointSpec("hostile", "127.0.0.1", port))
    await asyncio.sleep(seconds)
    await scraper.stop()
    cpu = time.process_time() - cpu
    await asyncio.sleep(0.01)
    probing.cancel()
    answered = scraper.scrapes + scraper.failures
    return {
        "answered": answered,
        "worst_ms": max(lateness) * 1000,
        "p99_ms": statistics.quantiles(lateness, n=100)[98] * 1000,
        "cpu_ms_per_scrape": cpu * 1000 / max(answered, 1),
    }


def page(kind: str) -> bytes:
    if kind == "bomb":
        return gzip.compress(b"\n" * (PLAIN_BODY_LIMIT + 1), 9)
    if kind == "wanted":
        line = b'vllm:num_requests_waiting{model_name="m"} 1\n'
        return gzip.compress(line * (INFLATED_LIMIT // len(line)), 9)
    return gzip.compress(vllm_page(lora=False))


def with_extensions(tree: str, built: Path) -> str:
    """The baseline with this tree's compiled page reader (git archive has only the C source;
    its pure-Python fallback would read a page at about 2.5x the CPU)."""
    for library in built.glob("epp/**/*.so"):
        target = Path(tree, library.relative_to(built))
        if target.parent.is_dir():
            shutil.copy2(library, target)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--page", choices=("bomb", "wanted", "vllm"), default="bomb")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default="main", help="git revision of the baseline scraper")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(asyncio.run(scrape(args.child, args.seconds))))
        return
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch, "baseline").mkdir()
        page_file = Path(scratch, "page.gz")
        page_file.write_bytes(page(args.page))
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(page_file)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            this_tree = Path(__file__).resolve().parent.parent
            baseline = with_extensions(checkout(args.baseline, str(Path(scratch, "baseline"))), this_tree)
            variants = {f"baseline ({args.baseline})": baseline, "this tree": str(this_tree)}
            print(
                f"page {args.page}: {page_file.stat().st_size} bytes gzip-encoded, {args.seconds:g} s a run"
            )
            for round_ in range(args.rounds):
                for name, pythonpath in variants.items():
                    arguments = ["--child", str(port), "--seconds", str(args.seconds)]
                    result = run_child(__file__, pythonpath, arguments)
                    print(
                        f"round {round_ + 1} {name:>16}: {result['answered']:5.0f} scrapes answered, "
                        f"loop late by {result['worst_ms']:7.1f} ms at worst, "
                        f"{result['p99_ms']:6.2f} ms p99, "
                        f"{result['cpu_ms_per_scrape']:7.2f} ms CPU a scrape",
                        flush=True,
                    )
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
