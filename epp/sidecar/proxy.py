"""Request handling: every request goes to the local engine; an inference POST carrying
`x-prefiller-host-port` first has its prefill done by that remote prefiller."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Coroutine
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from epp.datastore.endpoint import join_host_port
from epp.headers import PREFILLER_HEADER, REQUEST_ID_HEADER
from epp.requests.jsontext import MAX_JSON_DEPTH, dumps, exact, loads, scan
from epp.sidecar.allowlist import AllowList
from epp.sidecar.apis import RESPONSES_PATH, is_disaggregated_route
from epp.sidecar.connectors import SEQUENTIAL_HANDOFFS, Body, Connector, sglang_body
from epp.sidecar.encoding import decode_body
from epp.sidecar.errors import DECODE_NOT_READY, ProxyError, error_response
from epp.sidecar.headers import (
    choose_prefiller,
    client_response_headers,
    leg_request_headers,
    prefiller_candidates,
    upstream_request_headers,
)
from epp.sidecar.hostport import HostPort
from epp.sidecar.options import SidecarOptions
from epp.sidecar.prefill import PrefillClient
from epp.sidecar.relay import relay
from epp.sidecar.upstream import request_target, upstream_url
from epp.sidecar.usage import prefiller_cached_tokens

log = logging.getLogger(__name__)

SSRF_REFUSED = "Forbidden: prefill target not allowed by SSRF protection"


class RoutingProxy:
    def __init__(
        self,
        options: SidecarOptions,
        decoder: aiohttp.ClientSession,
        prefill: PrefillClient,
        allowlist: AllowList | None,
        rng: random.Random | None = None,
    ) -> None:
        self._options = options
        self._decoder = decoder
        self._decoder_base = (
            f"{options.decoder_tls.scheme}://"
            f"{join_host_port(options.model_server_host, options.model_server_port)}"
        )
        self._prefill = prefill
        self._allowlist = allowlist
        self._rng = rng or random.Random()
        self._detached: set[asyncio.Task[None]] = set()

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self._options.max_body_bytes)
        app.router.add_get("/health", self.health)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def close(self) -> None:
        """Cancel detached prefill legs still running at shutdown."""
        for task in list(self._detached):
            task.cancel()
        await asyncio.gather(*self._detached, return_exceptions=True)

    async def health(self, request: web.Request) -> web.Response:
        """Ready only while the local engine is: a decode pod without its engine must leave the
        pool's endpoints (llm-d answers 200 regardless)."""
        try:
            async with asyncio.timeout(self._options.health_timeout):
                async with self._decoder.get(
                    upstream_url(self._decoder_base, "/health"), allow_redirects=False
                ) as reply:
                    status = reply.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("decode engine health probe failed: %s", exc)
            return error_response(ProxyError(503, DECODE_NOT_READY))
        if status != 200:
            return error_response(ProxyError(503, f"the decode engine's /health answered {status}"))
        return web.Response(status=200)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if is_disaggregated_route(request.method, request.path):
                prefiller = await self._prefill_target(request)
                if prefiller is not None:
                    return await self._disaggregate(request, prefiller)
            return await self._proxy(request)
        except ProxyError as error:
            log.info("%s %s -> %d: %s", request.method, request.path, error.status, error.message)
            return error_response(error)

    async def _prefill_target(self, request: web.Request) -> HostPort | None:
        candidates = prefiller_candidates(request.headers)
        try:
            target = choose_prefiller(candidates, self._options.prefiller_sampling, self._rng)
        except ValueError as exc:
            raise ProxyError(400, f"invalid {PREFILLER_HEADER}: {exc}") from None
        if target is not None and self._allowlist is not None and not await self._allowlist.admits(target):
            log.warning("refused prefill target %s: not an endpoint of the pool", target)
            raise ProxyError(403, SSRF_REFUSED)
        return target

    async def _proxy(self, request: web.Request, data: Any = None) -> web.StreamResponse:
        """To the local engine as sent: the body streamed, or `data`, the body already read."""
        headers = upstream_request_headers(request.headers, request.remote)
        if data is None and request.body_exists:
            data = request.content
        upstream = await self._open_decoder(request.method, request_target(request), headers, data)
        async with upstream:
            return await relay(request, upstream)

    async def _disaggregate(self, request: web.Request, prefiller: HostPort) -> web.StreamResponse:
        original = await _read_json_object(request)
        if request.path == RESPONSES_PATH and _continues_stored_state(original):
            # vLLM keeps stored responses and conversations in the process that answered them: a
            # prefiller cannot build this prompt (its 404 "Response with id ... not found" failed
            # the request). The local engine holds the history and prefills it itself.
            log.debug("%s continues a stored response: prefilled locally, not on %s", request.path, prefiller)
            return await self._proxy(request, await request.read())
        headers = leg_request_headers(request.headers, request.remote, str(uuid.uuid4()))
        log.debug("%s: prefill on %s, request id %s", request.path, prefiller, headers[REQUEST_ID_HEADER])
        if self._options.connector is Connector.SGLANG:
            return await self._sglang(request, prefiller, original, headers)
        return await self._prefill_then_decode(request, prefiller, original, headers)

    async def _prefill_then_decode(
        self, request: web.Request, prefiller: HostPort, original: Body, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """NIXL: the decoder can only start once the prefiller says where the KV blocks are."""
        handoff = SEQUENTIAL_HANDOFFS[self._options.connector]
        prefill_body = dumps(handoff.prefill_body(original, request.path))
        reply = await self._prefill.send(prefiller, request_target(request), headers, prefill_body)
        if not reply.ok:
            headers_out = client_response_headers(reply.headers, keep_length=False)
            return web.Response(status=reply.status, headers=headers_out, body=reply.body)
        prefilled = _json_object(reply.body)
        if prefilled is None:
            raise ProxyError(502, f"prefiller {prefiller} answered with a body that is not a JSON object")
        if prefilled.get(handoff.location_field) is None:
            log.warning(
                "prefiller %s sent no %s: the decoder prefills again", prefiller, handoff.location_field
            )
        try:
            decode_body = dumps(handoff.decode_body(original, prefilled))
        except orjson.JSONEncodeError:
            # The client's body was checked for depth; only the prefiller's part can be too deep.
            raise ProxyError(
                502,
                f"prefiller {prefiller} answered with JSON nested deeper than the decode leg can "
                f"carry ({MAX_JSON_DEPTH} levels)",
            ) from None
        return await self._decode(request, headers, decode_body, prefiller_cached_tokens(prefilled))

    async def _sglang(
        self, request: web.Request, prefiller: HostPort, original: Body, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """SGLang pairs the legs by bootstrap room, so both start at once; the prefill reply is unused."""
        body = dumps(sglang_body(original, prefiller, self._options.sglang_bootstrap_port, self._rng))
        self._detach(self._prefill.send_detached(prefiller, request_target(request), headers, body))
        return await self._decode(request, headers, body, None)

    async def _decode(
        self, request: web.Request, headers: CIMultiDict[str], body: bytes, cached_tokens: int | None
    ) -> web.StreamResponse:
        upstream = await self._open_decoder("POST", request_target(request), headers, body)
        async with upstream:
            return await relay(request, upstream, cached_tokens)

    def _detach(self, leg: Coroutine[Any, Any, None]) -> None:
        """Outlives the client's request (a disconnect must not abort the engine pairing)."""
        task = asyncio.get_running_loop().create_task(leg)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def _open_decoder(
        self, method: str, target: str, headers: CIMultiDict[str], data: Any
    ) -> aiohttp.ClientResponse:
        url = upstream_url(self._decoder_base, target)
        try:
            return await self._decoder.request(method, url, headers=headers, data=data, allow_redirects=False)
        except aiohttp.ClientSSLError as exc:
            raise ProxyError(502, f"TLS to the decode engine failed: {exc}") from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            log.warning("decode engine at %s unreachable: %s", self._decoder_base, exc)
            raise ProxyError(503, DECODE_NOT_READY) from exc
        except aiohttp.ClientError as exc:
            raise ProxyError(502, f"the decode engine failed: {exc}") from exc


async def _read_json_object(request: web.Request) -> Body:
    limit = request.client_max_size
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ProxyError(413, f"request body larger than {limit} bytes") from None
    raw = decode_body(raw, request.headers.get("Content-Encoding", ""), limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"Invalid JSON in the request body: {exc}") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "The request body must be a JSON object")
    too_deep, long_number = scan(raw, body)
    if too_deep:  # orjson reads 1,024 levels but writes the legs 254 deep at most
        raise ProxyError(
            400,
            f"Invalid JSON in the request body: objects and arrays are nested deeper than the "
            f"limit of {MAX_JSON_DEPTH} levels",
        )
    return exact(raw) if long_number else body  # integers beyond 64 bits as the client wrote them


def _continues_stored_state(body: Body) -> bool:
    """A Responses request building on state the engine stores: a previous response or a
    conversation."""
    return body.get("previous_response_id") is not None or body.get("conversation") is not None


def _json_object(raw: bytes) -> Body | None:
    try:
        parsed = loads(raw)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None
