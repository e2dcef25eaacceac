"""`models-data-source` (llm-d): polls each endpoint's OpenAI model list (`GET /v1/models`, on
the port its metrics are scraped from) and hands every answer to the `models-data-extractor`s
the `dataLayer` section wires to it.

Parameters as llm-d's: `scheme` (http/https), `path`, `insecureSkipVerify` (default true),
`caCertPath`, `clientCertPath` + `clientKeyPath` (mTLS), `interval` (a Go duration, rounded to a
multiple of the 50 ms base tick; omitted: every tick). A failed poll (refused, non-200, malformed
list) keeps what was learned before and leaves the endpoint's health to the metrics scraper."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Literal

from pydantic import Field, model_validator

from epp.datalayer import BackgroundService, DataSource, ModelsExtractor
from epp.datalayer.endpointtasks import EndpointTasks
from epp.datalayer.fetch import KeepAliveGetter, insecure_tls_context
from epp.datalayer.models import parse_models
from epp.datalayer.scraper import DEFAULT_INTERVAL, DEFAULT_TIMEOUT
from epp.datastore import Datastore, Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.params.values import Duration

log = logging.getLogger(__name__)


class ModelsDataSourceParams(PluginParams):
    scheme: Literal["http", "https"] = "http"
    path: str = Field(default="/v1/models", pattern=r"^/")
    insecure_skip_verify: bool = True
    ca_cert_path: str = ""
    client_cert_path: str = ""
    client_key_path: str = ""
    interval: Duration = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _client_pair(self) -> ModelsDataSourceParams:
        if bool(self.client_cert_path) != bool(self.client_key_path):
            raise ValueError("clientCertPath and clientKeyPath must be set together")
        self.tls_context()  # a bad CA or key file fails the config, not every poll
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        """None for http. Verification follows `insecureSkipVerify` (the CA bundle is ignored
        when it is on, as llm-d's); a client certificate is presented when given."""
        if self.scheme == "http":
            return None
        if self.insecure_skip_verify:
            context = insecure_tls_context()
        else:
            try:
                context = ssl.create_default_context(cafile=self.ca_cert_path or None)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"caCertPath {self.ca_cert_path!r}: {exc}") from None
        if self.client_cert_path:
            try:
                context.load_cert_chain(self.client_cert_path, self.client_key_path)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"loading client cert {self.client_cert_path!r}: {exc}") from None
        return context


def round_to_ticks(interval: float, tick: float = DEFAULT_INTERVAL) -> float:
    """llm-d's runtime polls in whole base ticks: the nearest multiple, at least one."""
    return max(1, round(interval / tick)) * tick


@register
class ModelsDataSource(Plugin, DataSource, BackgroundService):
    type_name = "models-data-source"
    Params = ModelsDataSourceParams
    extractor_role = ModelsExtractor
    extractor_role_text = "a models extractor"

    def __init__(self, name: str, params: ModelsDataSourceParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.interval = round_to_ticks(params.interval)
        self._tls = params.tls_context()
        self._tasks = EndpointTasks("models", self._poll)
        self.extractors = []
        self.polls = 0
        self.failures = 0
        # llm-d's datalayer poll errors, by source type (as the metrics scraper's)
        self._poll_errors = context.metrics.datalayer_poll_errors.labels(self.type_name)

    async def start(self, datastore: Datastore) -> None:
        self._tasks.follow(datastore)

    async def stop(self) -> None:
        await self._tasks.stop()

    async def _poll(self, endpoint: Endpoint) -> None:
        getter = KeepAliveGetter(
            endpoint.address, endpoint.spec.metrics_port or endpoint.port, self.params.path, self._tls
        )
        try:
            while True:
                started = time.monotonic()
                await self.poll_once(endpoint, getter)
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            getter.close()

    async def poll_once(self, endpoint: Endpoint, getter: KeepAliveGetter) -> bool:
        """Read the list once and hand it to the extractors; False (logged) when it failed."""
        try:
            status, body = await getter.get(DEFAULT_TIMEOUT)
            if status != 200:
                raise ValueError(f"HTTP {status}")
            models = parse_models(body)
        except Exception as exc:  # whatever a connection or a body can throw is one failed poll
            self.failures += 1
            self._poll_errors.inc()
            log.debug("models poll of %s%s failed: %s", endpoint, self.params.path, exc)
            return False
        self.polls += 1
        for extractor in self.extractors:
            assert isinstance(extractor, ModelsExtractor)
            extractor.extract_models(endpoint, models)
        return True
