"""Polls every endpoint's /metrics on the event loop and keeps Endpoint.metrics and health current."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.datalayer.endpointtasks import EndpointTasks
from epp.datalayer.engines import BUILTIN_ENGINES, ENGINE_LABEL, EngineMetrics
from epp.datalayer.fetch import KeepAliveGetter, insecure_tls_context
from epp.datalayer.promtext import Extractor
from epp.datastore import Datastore, Endpoint

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.05  # GIE's --refresh-metrics-interval
DEFAULT_TIMEOUT = 1.0  # GIE's per-poll timeout


@dataclass(frozen=True)
class ScrapeSettings:
    """Where metrics pages are and how to read them: set by the config's data-layer plugins
    (`metrics-data-source`, `core-metrics-extractor`); the defaults are GIE's."""

    scheme: str = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = True
    engines: Mapping[str, EngineMetrics] = field(default_factory=lambda: BUILTIN_ENGINES)
    default_engine: str = "vllm"
    engine_label_key: str = ENGINE_LABEL


def _tls_context(settings: ScrapeSettings) -> ssl.SSLContext:
    return insecure_tls_context() if settings.insecure_skip_verify else ssl.create_default_context()


class MetricsScraper:
    """One polling task per endpoint, each on its own keep-alive connection.

    Health: a refused connection (the server is gone) or a scrape timeout (it hangs) marks the
    endpoint unhealthy at once; other failures (non-200, a malformed or cut page) after
    `failures_before_unhealthy` in a row. The first good scrape
    makes it healthy again. GIE relies on Kubernetes readiness for this; standalone mode has none."""

    def __init__(
        self,
        datastore: Datastore,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        settings: ScrapeSettings | None = None,
        failures_before_unhealthy: int = 3,
    ) -> None:
        settings = settings or ScrapeSettings()
        if settings.default_engine not in settings.engines:
            known = sorted(settings.engines)
            raise ValueError(f"unknown default engine {settings.default_engine!r}; known: {known}")
        if settings.scheme not in ("http", "https"):
            raise ValueError(f"metrics scheme must be http or https, not {settings.scheme!r}")
        self._datastore = datastore
        self.interval = interval
        self._timeout = timeout
        self._engines = dict(settings.engines)
        self._extractors = {name: Extractor(e.names()) for name, e in self._engines.items()}
        self._default_engine = settings.default_engine
        self._engine_label_key = settings.engine_label_key
        self._tls = _tls_context(settings) if settings.scheme == "https" else None
        self._path = settings.path
        self._failures_before_unhealthy = failures_before_unhealthy
        self._tasks = EndpointTasks("scrape", self._poll)
        self.scrapes = 0
        self.failures = 0

    async def start(self) -> None:
        self._tasks.follow(self._datastore)

    async def stop(self) -> None:
        await self._tasks.stop()

    def engine_for(self, endpoint: Endpoint) -> str:
        engine = endpoint.labels.get(self._engine_label_key, self._default_engine)
        return engine if engine in self._engines else self._default_engine

    async def _poll(self, endpoint: Endpoint) -> None:
        getter = KeepAliveGetter(
            endpoint.address, endpoint.spec.metrics_port or endpoint.port, self._path, self._tls
        )
        engine = self.engine_for(endpoint)
        failures = 0
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.scrape_once(endpoint, getter, engine)
                    failures = 0
                    endpoint.healthy = True
                    endpoint.suspended_until = 0.0
                except ConnectionRefusedError as exc:
                    failures = self._failed(endpoint, failures, f"connection refused: {exc}", immediate=True)
                except TimeoutError:
                    # A server that cannot answer /metrics within the timeout is hung or stalled
                    # (e.g. SIGSTOP): requests sent there now would wait for the gateway's bounds.
                    reason = f"no answer within {self._timeout:g}s"
                    failures = self._failed(endpoint, failures, reason, immediate=True)
                except Exception as exc:  # anything a page or a connection can throw is a failed scrape
                    failures = self._failed(
                        endpoint, failures, f"{type(exc).__name__}: {exc}", immediate=False
                    )
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            getter.close()

    def _failed(self, endpoint: Endpoint, failures: int, reason: str, immediate: bool) -> int:
        self.failures += 1
        failures += 1
        if endpoint.healthy and (immediate or failures >= self._failures_before_unhealthy):
            log.warning("endpoint %s unhealthy after %d failed scrape(s): %s", endpoint, failures, reason)
            endpoint.healthy = False
        return failures

    async def scrape_once(self, endpoint: Endpoint, getter: KeepAliveGetter, engine: str) -> None:
        status, body = await getter.get(self._timeout)
        if status != 200:
            raise ValueError(f"HTTP {status} from {endpoint.spec.metrics_hostport}{self._path}")
        self.scrapes += 1
        samples = self._extractors[engine].extract_bytes(body)
        endpoint.metrics = self._engines[engine].read(samples, time.monotonic())
