"""Which headers cross the proxy: hop-by-hop ones never do (RFC 9110 7.6.1), nor do the EPP's P/D
routing headers, which are instructions to this sidecar and not to the engine behind it."""

from __future__ import annotations

import random
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from epp.headers import ENCODER_HOSTS_HEADER, KV_CACHE_SOURCE_HEADER, PREFILLER_HEADER, REQUEST_ID_HEADER
from epp.sidecar.hostport import HostPort

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
ROUTING_HEADERS = frozenset({PREFILLER_HEADER, ENCODER_HOSTS_HEADER, KV_CACHE_SOURCE_HEADER})

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def _connection_listed(headers: Headers) -> set[str]:
    """Headers named in `Connection` are hop-by-hop for this hop only."""
    return {token.strip().lower() for value in headers.getall("connection", []) for token in value.split(",")}


def _without(headers: Headers, excluded: Iterable[str]) -> CIMultiDict[str]:
    dropped = HOP_BY_HOP | _connection_listed(headers) | set(excluded)
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in dropped)


def upstream_request_headers(headers: Headers, peer: str | None) -> CIMultiDict[str]:
    """For a request streamed through unchanged: the client's Content-Length still holds. `Host`
    is left for the client library to set to the upstream; `X-Forwarded-For` grows by the peer,
    as Go's ReverseProxy (and so llm-d's sidecar) does."""
    out = _without(headers, ROUTING_HEADERS | {"host", "x-forwarded-for"})
    if peer:
        prior = ", ".join(headers.getall("x-forwarded-for", []))
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return out


def leg_request_headers(headers: Headers, peer: str | None, request_id: str) -> CIMultiDict[str]:
    """For a P/D leg whose JSON body the sidecar rewrites and whose reply it parses: the body is
    sent uncompressed with its length recomputed and labelled JSON, the reply must come
    uncompressed, and both legs share one fresh request id (vLLM and NIXL correlate the KV
    transfer by it)."""
    out = upstream_request_headers(headers, peer)
    out.popall("content-length", None)
    out.popall("content-encoding", None)
    out[REQUEST_ID_HEADER] = request_id
    out["Content-Type"] = "application/json"
    out["Accept-Encoding"] = "identity"
    return out


def client_response_headers(headers: Headers, keep_length: bool) -> CIMultiDict[str]:
    """`keep_length` only when the body is relayed byte for byte."""
    return _without(headers, () if keep_length else {"content-length"})


def prefiller_candidates(headers: Headers) -> list[str]:
    """Every listed prefiller: the header may repeat and each value may be a comma-separated list."""
    return [
        item.strip()
        for value in headers.getall(PREFILLER_HEADER, [])
        for item in value.split(",")
        if item.strip()
    ]


def choose_prefiller(candidates: list[str], sample: bool, rng: random.Random) -> HostPort | None:
    """The first candidate, or a random one with prefiller sampling. Raises ValueError if malformed."""
    if not candidates:
        return None
    return HostPort.parse(rng.choice(candidates) if sample else candidates[0])
