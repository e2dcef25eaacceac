"""Client side of the proxy: one keep-alive connection pool per upstream stage."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from epp.sidecar.errors import ProxyError
from epp.sidecar.tls import client_context

# Upstream idle connections are kept this long, as Go's default transport does.
KEEPALIVE_SECONDS = 90.0
# The proxy forwards the client's headers as they are: the client library must not add its own
# (an added `Accept-Encoding: gzip` would get the client a compressed body it never asked for).
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class Stage(enum.StrEnum):
    PREFILLER = "prefiller"
    DECODER = "decoder"


@dataclass(frozen=True, slots=True)
class StageTls:
    enabled: bool = False
    skip_verify: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"


def open_session(tls: StageTls, connect_timeout: float) -> aiohttp.ClientSession:
    """No total or read timeout: generations can stream for many minutes (the prefill leg has its
    own bound). Bodies pass through undecoded, so Content-Encoding stays true."""
    connector = aiohttp.TCPConnector(
        limit=0,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ssl=client_context(tls.skip_verify) if tls.enabled else False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        auto_decompress=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
    )


def request_target(request: web.Request) -> str:
    """The client's path and query, percent-encoded as sent. Never the raw request target: in
    absolute form (`POST http://host/v1/completions`) that is a whole URL."""
    return request.rel_url.raw_path_qs


def upstream_url(origin: str, target: str) -> URL:
    """`origin` (`scheme://host:port`) with `target` (from `request_target`) passed on unchanged.
    Raises a 400 for a target no URL can be built from."""
    url = URL(origin + target, encoded=True)
    try:
        url.port  # noqa: B018  (yarl parses the authority lazily: fail here, not in the client)
    except ValueError as exc:
        raise ProxyError(400, f"invalid request target {target!r}: {exc}") from None
    return url
