"""What open live-view event streams (`GET /api/events`) cost the EPP's event loop.

A child process serves the live view (`LiveView` on the metrics server) over a datastore of
`--endpoints` endpoints, as `epp serve` does; this process opens `--streams` event streams to it,
reads them, and reports the child's CPU use (utime + stime from /proc over `--seconds`), its RSS,
and how many streams were refused (503, the cap). Run it from a tree to measure that tree:

    PYTHONPATH=$PWD .venv/bin/python bench/event_stream_cost.py [--streams 100] [--endpoints 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp


async def serve(endpoints: int) -> None:
    from prometheus_client import CollectorRegistry

    from epp.datastore import Datastore, EndpointSpec
    from epp.explain import DecisionRecorder, RecordOptions
    from epp.metrics.http import MetricsServer
    from epp.observe import LiveView

    datastore = Datastore()
    datastore.replace_all(
        EndpointSpec(name=f"pod-{i}-rank-0", address=f"10.0.{i // 250}.{i % 250 + 1}", port=8000)
        for i in range(endpoints)
    )
    view = LiveView(datastore, DecisionRecorder(RecordOptions(capacity=100)))
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, view.routes(), view.on_shutdown)
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(line.split()[1] for line in status if line.startswith("VmRSS"))


async def measure(port: int, pid: int, streams: int, seconds: float) -> str:
    async def stream(session: aiohttp.ClientSession) -> int:
        async with session.get(f"http://127.0.0.1:{port}/api/events") as response:
            if response.status == 200:
                async for _ in response.content.iter_chunked(1 << 16):
                    pass
            return response.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.ensure_future(stream(session)) for _ in range(streams)]
        await asyncio.sleep(3)  # every stream connected and past its first events
        cpu, start = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        share = (cpu_seconds(pid) - cpu) / (time.monotonic() - start)
        rss = rss_kb(pid)
        refused = sum(1 for task in tasks if task.done() and task.result() != 200)
        for task in tasks:
            task.cancel()
    return f"streams={streams} server_cpu={100 * share:.1f}% rss_kb={rss} refused={refused}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--endpoints", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.endpoints))
        return
    argv = [sys.executable, __file__, "--serve", f"--endpoints={args.endpoints}"]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        print(asyncio.run(measure(port, child.pid, args.streams, args.seconds)))
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    main()
