"""Relaying an upstream response to the client: streamed as it arrives, or with `cached_tokens`
corrected (a JSON body is buffered and rewritten whole; an event stream line by line)."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from epp.sidecar.errors import ProxyError
from epp.sidecar.headers import client_response_headers
from epp.sidecar.usage import SseRewriter, rewrite_json

log = logging.getLogger(__name__)


def _rewritable(upstream: aiohttp.ClientResponse) -> bool:
    """Errors and compressed bodies are relayed as they are."""
    encoding = upstream.headers.get("Content-Encoding", "identity").lower()
    return 200 <= upstream.status < 300 and encoding == "identity"


async def relay(
    request: web.Request, upstream: aiohttp.ClientResponse, cached_tokens: int | None = None
) -> web.StreamResponse:
    """`cached_tokens`, when given, replaces the figure in the reply's usage."""
    if cached_tokens is not None and _rewritable(upstream):
        if upstream.content_type == "application/json":
            try:
                body = rewrite_json(await upstream.read(), cached_tokens)
            except aiohttp.ClientError as exc:  # nothing has reached the client yet: say why
                raise ProxyError(502, f"the decode engine failed before its reply ended: {exc}") from exc
            headers = client_response_headers(upstream.headers, keep_length=False)
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        if upstream.content_type == "text/event-stream":
            return await _stream(request, upstream, SseRewriter(cached_tokens))
    return await _stream(request, upstream, None)


async def _stream(
    request: web.Request, upstream: aiohttp.ClientResponse, rewriter: SseRewriter | None
) -> web.StreamResponse:
    headers = client_response_headers(upstream.headers, keep_length=rewriter is None)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            out = rewriter.feed(chunk) if rewriter else chunk
            if out:
                await response.write(out)
    except aiohttp.ClientError as exc:
        # The status line is sent already: cut the connection so the client sees a truncated
        # reply rather than a clean end of stream.
        log.warning("upstream %s failed mid-response: %s", upstream.url, exc)
        if request.transport is not None:
            request.transport.close()
        return response
    tail = rewriter.flush() if rewriter else b""
    if tail:
        await response.write(tail)
    await response.write_eof()
    return response
