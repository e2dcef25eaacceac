"""Serves a Prometheus registry on /metrics from the event loop (aiohttp, no extra thread),
optionally behind Kubernetes authentication and authorization (epp.metrics.auth)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

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
        self.port = 0
        self.auth: MetricsAuth | None = None  # set before start: reviews every request
        self.ssl_context: ssl.SSLContext | None = None  # set before start: serve over TLS

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

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
