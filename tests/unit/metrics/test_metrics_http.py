"""/metrics served from the event loop: a page as large as the label caps allow."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.metrics import http as http_module
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


async def test_a_page_as_large_as_the_caps_allow_lets_the_loop_run_while_it_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """256 invented model names (the cap) make a 20 MB page of 45,000 samples; it was written on
    the event loop in one piece, which held every request through the EPP for as long: measured
    through `epp run`, requests that took 0.044 s (p99) took 1.6 s during each scrape. Now the
    loop runs between collectors (another task is seen to run between any two of them) and the
    text is written in a thread, and the page is the same."""
    metrics = EppMetrics()
    invented_models(metrics)
    ticks = 0
    seen: list[int] = []  # the ticks each collector was collected at
    for _ in range(3):
        metrics.registry.register(Seen(lambda: ticks, seen))
    expected = generate_latest(metrics.registry)
    seen.clear()
    writers: list[int] = []
    written = http_module._written

    def spied(*args: Any) -> bytes:
        writers.append(threading.get_ident())
        return written(*args)

    monkeypatch.setattr(http_module, "_written", spied)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    try:
        async with aiohttp.ClientSession() as session:
            ticker = asyncio.create_task(tick())
            async with session.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                body = await response.read()
            ticker.cancel()
    finally:
        await server.stop()
    assert body == expected and len(body) > 10_000_000
    assert len(seen) == 3 and seen[0] < seen[1] < seen[2], seen
    assert writers and threading.get_ident() not in writers


class Seen(Collector):
    """Records, at each collection, how often another task had run by then."""

    def __init__(self, ticks: Callable[[], int], seen: list[int]) -> None:
        self._ticks, self._seen = ticks, seen

    def collect(self) -> list[Metric]:
        self._seen.append(self._ticks())
        return [GaugeMetricFamily(f"seen_{id(self)}", "a collection", value=1)]


class Counted(Collector):
    """A collector that counts how often it is collected."""

    def __init__(self) -> None:
        self.collected = 0

    def collect(self) -> list[Metric]:
        self.collected += 1
        return [GaugeMetricFamily("counted", "collections", value=self.collected)]


async def test_with_aliases_the_registry_is_collected_once_a_read() -> None:
    """`--metrics-aliases` made the alias collector collect the whole registry a second time, on
    the loop and in one piece (0.41 s of a 1.7 s page with the caps full; 0.23 s since). Its
    aliases are made from the families collected once, in the writing thread."""
    metrics = EppMetrics(aliases=("llm-d",))
    invented_models(metrics)
    counted = Counted()
    metrics.registry.register(counted)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            page = (await response.read()).decode()
    finally:
        await server.stop()
    assert counted.collected == 1
    name = "invented-0-".ljust(MAX_MODEL_NAME_LENGTH, "x")
    labels = (
        f'endpoint_name="sim-0",namespace="default",port="8000",status="success",target_model_name="{name}"'
    )
    aliased = f"llm_d_epp_scheduler_attempts_total{{{labels}}}"
    assert aliased in page and "\ncounted 1.0\n" in page


@contextlib.asynccontextmanager
async def serving(
    collector: Collector, server_ready: Callable[[MetricsServer], None] = lambda server: None
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A MetricsServer of a registry holding only `collector`, and a client session for its page."""
    registry = CollectorRegistry()
    registry.register(collector)
    server = MetricsServer(registry, "127.0.0.1", 0)
    server_ready(server)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield session, f"http://127.0.0.1:{server.port}/metrics"
    finally:
        await server.stop()


async def collected_in_a_thread(registry: CollectorRegistry) -> bytes:
    return await asyncio.to_thread(generate_latest, registry)


class Gated(Collector):
    """A collector whose collection waits (in a thread, as the test's loop must run) until let."""

    def __init__(self) -> None:
        self.collected = 0
        self.entered = threading.Event()
        self.let = threading.Event()

    def collect(self) -> list[Metric]:
        self.collected += 1
        self.entered.set()
        if not self.let.wait(10):
            raise TimeoutError("never let")
        return [GaugeMetricFamily("gated", "collections", value=self.collected)]


async def test_scrapes_that_arrive_together_share_one_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scrape made its own page: 24 scrapes at once of a page as large as the caps allow held
    3.4 GB. Scrapes that arrive while a page is made get that page; one that leaves does not
    cancel it for the others; the next scrape makes a new one."""
    gated = Gated()
    # Collected off the loop: the gated collection blocks its thread, and the test's loop runs.
    monkeypatch.setattr(http_module, "exposition", collected_in_a_thread)
    arrived = 0

    def counting(server: MetricsServer) -> None:
        shared_page = server._shared_page

        async def counted() -> bytes:
            nonlocal arrived
            arrived += 1
            return await shared_page()

        monkeypatch.setattr(server, "_shared_page", counted)

    try:
        async with serving(gated, counting) as (session, url):

            async def scrape() -> bytes:
                async with session.get(url) as response:
                    assert response.status == 200
                    return await response.read()

            first = asyncio.create_task(scrape())
            await asyncio.to_thread(gated.entered.wait, 10)
            leaving = asyncio.create_task(scrape())
            others = [asyncio.create_task(scrape()) for _ in range(4)]
            for _ in range(500):  # until every handler waits for the page (bounded: 5 s)
                if arrived == 6:
                    break
                await asyncio.sleep(0.01)
            leaving.cancel()
            gated.let.set()
            pages = await asyncio.gather(first, *others)
            assert gated.collected == 1
            assert all(page == pages[0] for page in pages) and b"gated 1.0" in pages[0]
            assert b"gated 2.0" in await scrape()
    finally:
        gated.let.set()


async def test_a_cancelled_scrape_does_not_cancel_the_page_the_others_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gated = Gated()
    registry = CollectorRegistry()
    registry.register(gated)
    monkeypatch.setattr(http_module, "exposition", collected_in_a_thread)
    server = MetricsServer(registry, "127.0.0.1", 0)
    cancelled = asyncio.create_task(server._shared_page())
    await asyncio.to_thread(gated.entered.wait, 10)
    waiting = asyncio.create_task(server._shared_page())
    await asyncio.sleep(0)  # both wait for the one page
    cancelled.cancel()
    gated.let.set()
    assert b"gated 1.0" in await asyncio.wait_for(waiting, 10)
    assert cancelled.cancelled() and gated.collected == 1


async def test_a_page_that_failed_is_not_kept_for_the_next_scrape() -> None:
    failing = Failing()
    async with serving(failing) as (session, url):

        async def status() -> int:
            async with session.get(url) as response:
                return response.status

        assert await asyncio.gather(status(), status()) == [500, 500]
        failing.fails = False
        assert await status() == 200


class Failing(Collector):
    def __init__(self) -> None:
        self.fails = True

    def collect(self) -> list[Metric]:
        if self.fails:
            raise RuntimeError("a collector failed")
        return [GaugeMetricFamily("failing", "collections", value=1)]


async def test_the_page_is_gzipped_for_a_scraper_that_asks_and_plain_otherwise() -> None:
    """Prometheus sends `Accept-Encoding: gzip` and Go's promhttp answers compressed; the page was
    always plain (101 KB a scrape with two endpoints)."""
    metrics = EppMetrics()
    invented_models(metrics)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
                zipped, encoding = await response.read(), response.headers.get("Content-Encoding")
            async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:
                plain, plain_encoding = await response.read(), response.headers.get("Content-Encoding")
    finally:
        await server.stop()
    assert (encoding, plain_encoding) == ("gzip", None)
    assert gzip.decompress(zipped) == plain
    assert plain.startswith(b"# HELP") and len(zipped) < len(plain) // 10
