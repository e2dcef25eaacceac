"""The assembled sidecar: allowlist source, upstream pools, listener, ready file, orderly stop."""

from __future__ import annotations

import contextlib
import logging
import random

from aiohttp import web

from epp.readyfile import write_ready_file
from epp.sidecar.allowlist import AllowListSource, EndpointFileSource
from epp.sidecar.options import SidecarOptions
from epp.sidecar.prefill import PrefillClient
from epp.sidecar.proxy import RoutingProxy
from epp.sidecar.tls import ServerTls
from epp.sidecar.upstream import open_session

log = logging.getLogger(__name__)

# Request headers may be large (llm-d allows 1 MiB); aiohttp's 8 KiB default would reject some.
MAX_HEADER_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """The options cannot run safely; the message says what to change."""


def _allowlist_source(options: SidecarOptions, given: AllowListSource | None) -> AllowListSource | None:
    if not options.ssrf_protection:
        if options.pool is not None:
            log.warning(
                "InferencePool %s given but SSRF protection is off (llm-d's default): prefill "
                "targets are not checked; add --enable-ssrf-protection=true to check them",
                options.pool,
            )
        return None
    if given is not None:
        return given
    if options.pool is not None and options.endpoints_file is not None:
        raise ConfigError("--inference-pool and --endpoints-file exclude each other: give one of them")
    if options.pool is not None:
        from epp.sidecar.poolsource import PoolSource  # only now: it loads the Kubernetes client

        return PoolSource(options.pool, options.kubeconfig, sync_timeout=options.pool_sync_timeout)
    if options.endpoints_file is not None:
        return EndpointFileSource(options.endpoints_file)
    raise ConfigError(
        "--inference-pool flag or INFERENCE_POOL environment variable is required when "
        "--enable-ssrf-protection is true (or, without Kubernetes, --endpoints-file: the EPP's "
        "endpoint file)"
    )


class Sidecar:
    """`start` binds the port (0 = a free one) and returns once serving; `stop` drains in-flight
    requests for up to `shutdown_timeout` before cutting them. `allowlist_source`, when given, is the
    SSRF allowlist's source instead of the one the options name (a test's, for instance)."""

    def __init__(
        self,
        options: SidecarOptions,
        allowlist_source: AllowListSource | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self._source = _allowlist_source(options, allowlist_source)
        self.allowlist = self._source.allowlist if self._source is not None else None
        self._rng = rng
        self._server_tls = ServerTls(options.cert_path) if options.secure_proxy else None
        self._started = contextlib.AsyncExitStack()
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self._server_tls is not None else "http"

    async def start(self) -> None:
        """Serve; if any part fails to start (a busy port, say), the parts already started are
        stopped again before the error propagates."""
        async with contextlib.AsyncExitStack() as started:
            if self._source is not None:
                await self._source.start()
                started.push_async_callback(self._source.stop)
            if self._server_tls is not None:
                await self._server_tls.start()
                started.push_async_callback(self._server_tls.stop)
            options = self.options
            decoder = await started.enter_async_context(
                open_session(options.decoder_tls, options.connect_timeout)
            )
            prefiller = await started.enter_async_context(
                open_session(options.prefiller_tls, options.connect_timeout)
            )
            prefill = PrefillClient(prefiller, options.prefiller_tls, options.prefill)
            proxy = RoutingProxy(options, decoder, prefill, self.allowlist, self._rng)
            started.push_async_callback(proxy.close)
            runner = web.AppRunner(
                proxy.application(),
                # Request bodies stay as the client encoded them: plain proxying forwards them byte
                # for byte (Content-Encoding and Content-Length stay true), the P/D path decodes
                # them itself.
                auto_decompress=False,
                access_log=logging.getLogger("epp.sidecar.access") if options.access_log else None,
                handler_cancellation=True,
                shutdown_timeout=options.shutdown_timeout,
                max_line_size=MAX_HEADER_BYTES,
                max_field_size=MAX_HEADER_BYTES,
            )
            await runner.setup()
            started.push_async_callback(runner.cleanup)
            ssl_context = self._server_tls.context if self._server_tls is not None else None
            await web.TCPSite(runner, options.host, options.port, ssl_context=ssl_context).start()
            self.port = int(runner.addresses[0][1])
            if options.ready_file is not None:
                write_ready_file(
                    options.ready_file, {"host": options.host, "port": self.port, "scheme": self.scheme}
                )
            self._started = started.pop_all()
        log.info(
            "sidecar on %s://%s:%d for the engine at %s:%d (connector %s, SSRF protection %s)",
            self.scheme,
            options.host,
            self.port,
            options.model_server_host,
            options.model_server_port,
            options.connector,
            f"on, {len(self.allowlist)} targets" if self.allowlist is not None else "OFF",
        )

    async def stop(self) -> None:
        """Stop listening, drain, then stop the rest, in the reverse order of `start`."""
        await self._started.aclose()
