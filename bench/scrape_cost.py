"""CPU cost of scraping model-server /metrics: N endpoints at the default 50 ms interval.

The servers run in a child process and answer a fixed vLLM-like page (gauges plus histograms, about
the size a real vLLM replica serves), so the figure is the EPP process's own CPU: HTTP client,
regex extraction and metric mapping. Run:

    .venv/bin/python bench/scrape_cost.py --endpoints 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time

from epp.datalayer.scraper import DEFAULT_INTERVAL, MetricsScraper
from epp.datastore import Datastore, EndpointSpec

SERVER = r"""
import asyncio, json, sys
from aiohttp import web

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

async def main(count: int) -> None:
    body = page()
    async def metrics(request):
        return web.Response(body=body, content_type="text/plain")
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = []
    for _ in range(count):
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])
    print(json.dumps({"ports": ports, "page_bytes": len(body)}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


async def measure(ports: list[int], seconds: float, interval: float) -> tuple[float, int, int]:
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=interval)
    await scraper.start()
    for i, port in enumerate(ports):
        datastore.upsert(EndpointSpec(f"e{i}", "127.0.0.1", port))
    await asyncio.sleep(1.0)  # warm-up: connections opened, first scrapes done
    cpu0, wall0, scrapes0 = time.process_time(), time.monotonic(), scraper.scrapes
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    scrapes = scraper.scrapes - scrapes0
    failures = scraper.failures
    await scraper.stop()
    return cpu / wall, scrapes, failures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.endpoints)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        share, scrapes, failures = asyncio.run(measure(info["ports"], args.seconds, args.interval))
    finally:
        server.terminate()
        server.wait()
    expected = args.endpoints * args.seconds / args.interval
    print(
        f"endpoints={args.endpoints} interval={args.interval * 1000:.0f}ms page={info['page_bytes']}B "
        f"scrapes={scrapes} ({scrapes / expected:.0%} of schedule) failures={failures}\n"
        f"EPP CPU for scraping: {share:.1%} of one core "
        f"({share / (scrapes / args.seconds) * 1e6:.0f} us per scrape)"
    )


if __name__ == "__main__":
    main()
