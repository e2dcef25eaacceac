"""Client side of the proxy: one keep-alive connection pool per upstream stage."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import aiohttp

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
