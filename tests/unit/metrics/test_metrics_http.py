"""/metrics served from the event loop: a page as large as the label caps allow."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client import generate_latest

from epp.metrics.exporter import MAX_MODEL_NAME_LENGTH, MAX_MODEL_SERIES, EppMetrics
from epp.metrics.http import MetricsServer
from epp.requests.usage import Usage


def invented_models(metrics: EppMetrics) -> None:
    """What a client inventing model names leaves: every (model, target) pair the cap keeps, each
    name as long as it allows, each with a request finished and an error."""
    for i in range(MAX_MODEL_SERIES):
        name = f"invented-{i}-".ljust(MAX_MODEL_NAME_LENGTH, "x")
        series = metrics.series(name, name)
        series.scheduled(0, 100, "sim-0", "default", 8000)
        series.error("NotFound")
        usage = Usage(prompt_tokens=5, completion_tokens=3, cached_tokens=0, total_tokens=8)
        series.finished(0.1, 100, usage)


async def test_a_page_as_large_as_the_caps_allow_lets_the_loop_run_while_it_is_made() -> None:
    """256 invented model names (the cap) make a 20 MB page of 45,000 samples; it was written on
    the event loop in one piece, which held every request through the EPP for as long: measured
    through `epp run`, requests that took 0.044 s (p99) took 1.6 s during each scrape. The loop now
    runs between collectors and the text is written in a thread: its longest stall is a fraction
    of the page's time, and the page is the same."""
    metrics = EppMetrics()
    invented_models(metrics)
    expected = generate_latest(metrics.registry)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.001)
            now = loop.time()
            gaps.append(now - last)
            last = now

    try:
        async with aiohttp.ClientSession() as session:
            ticker = asyncio.create_task(tick())
            await asyncio.sleep(0.05)
            started = loop.time()
            async with session.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                body = await response.read()
            took = loop.time() - started
            ticker.cancel()
    finally:
        await server.stop()
    assert body == expected and len(body) > 10_000_000
    assert max(gaps) < took / 3, (max(gaps), took)
