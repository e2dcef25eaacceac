"""Serves a Prometheus registry on /metrics from the event loop (aiohttp), optionally behind
Kubernetes authentication and authorization (epp.metrics.auth).

The page is collected one collector at a time on the loop, which runs between them, and written
out in a thread (`exposition`): the collectors read the loop's state, but the text of families
already collected is the bulk of the work, and a page as large as the label caps allow (256
invented model names: about 45,000 samples, 10 MB) held the loop 1.6 s in one piece at every
scrape, every request through the EPP waiting behind it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from epp.metrics.aliases import AliasCollector

if TYPE_CHECKING:
    from epp.metrics.auth import MetricsAuth


class MetricsServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        routes: Sequence[web.RouteDef] = (),
        on_shutdown: Callable[[web.Application], Awaitable[None]] | None = None,
    ) -> None:
        """`routes` are served beside /metrics (the decision API and live view)."""
        self._registry = registry
        self._routes = routes
        self._on_shutdown = on_shutdown
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._page: asyncio.Future[bytes] | None = None  # the page being made (_shared_page)
        self.port = 0
        self.auth: MetricsAuth | None = None  # set before start: reviews every request
        self.ssl_context: ssl.SSLContext | None = None  # set before start: serve over TLS

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self._shared_page()
        response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        # Compressed when the scraper accepts it, as Go's promhttp does (Prometheus asks for gzip:
        # 101 KB a scrape for two endpoints); aiohttp compresses a body this size in a thread.
        response.enable_compression()
        return response

    async def _shared_page(self) -> bytes:
        """The page being made, if one is, else a new one: scrapes that arrive together share
        it. Each made its own, and a page as large as the caps allow (50 MB with llm-d's names)
        held that much memory per scrape in flight: 24 at once raised the EPP's RSS by 3.4 GB.
        Shielded: a scrape cancelled (its handler, at shutdown or with aiohttp's
        handler_cancellation) does not cancel the page the others wait for."""
        page = self._page
        if page is None:
            page = self._page = asyncio.ensure_future(exposition(self._registry))
            page.add_done_callback(self._page_made)
        return await asyncio.shield(page)

    def _page_made(self, page: asyncio.Future[bytes]) -> None:
        if self._page is page:
            self._page = None
        if not page.cancelled():
            page.exception()  # read here too: every scraper may have left before it failed

    async def start(self) -> None:
        app = web.Application(middlewares=[self.auth.middleware] if self.auth is not None else [])
        app.router.add_get("/metrics", self._metrics)
        app.add_routes(self._routes)
        if self._on_shutdown is not None:
            app.on_shutdown.append(self._on_shutdown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port, ssl_context=self.ssl_context).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def exposition(registry: CollectorRegistry) -> bytes:
    """`generate_latest(registry)`, without holding the event loop for the whole page: each
    collector's families are collected on the loop (they read its state) with the loop let run
    between collectors, and the families collected are written out in a thread (their samples are
    plain values, no longer shared with the loop), with their aliases (`--metrics-aliases`), which
    the alias collector would otherwise make by collecting the whole registry again in one piece.
    The collectors are listed as the registry lists them when it collects (prometheus_client keeps
    no public list of them)."""
    with registry._lock:
        collectors = list(registry._collector_to_names)
    families: list[Metric] = []
    aliases: list[AliasCollector] = []
    for collector in collectors:
        if isinstance(collector, AliasCollector) and collector.registry is registry:
            # Collecting it would collect the registry again: its aliases come from `families`.
            aliases.append(collector)
            continue
        families.extend(collector.collect())
        await asyncio.sleep(0)
    return await asyncio.to_thread(_written, families, aliases)


def _written(families: list[Metric], aliases: Sequence[AliasCollector]) -> bytes:
    renamed = [alias for collector in aliases for alias in collector.renamed(families)]
    return generate_latest(_Collected([*families, *renamed]))


class _Collected:
    """Families already collected, read as generate_latest reads a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
