"""Which headers cross the sidecar, and how the prefiller header is read."""

from __future__ import annotations

import random

import pytest
from multidict import CIMultiDict

from epp.sidecar.headers import (
    choose_prefiller,
    client_response_headers,
    leg_request_headers,
    prefiller_candidates,
    upstream_request_headers,
)
from epp.sidecar.hostport import HostPort


def client_headers() -> CIMultiDict[str]:
    return CIMultiDict(
        [
            ("Host", "gateway.example"),
            ("Content-Type", "application/json"),
            ("Content-Length", "42"),
            ("Connection", "keep-alive, X-Hop-Secret"),
            ("Keep-Alive", "timeout=5"),
            ("X-Hop-Secret", "s"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic x"),
            ("Authorization", "Bearer token"),
            ("X-Prefiller-Host-Port", "10.0.0.1:8000"),
            ("x-encoder-hosts-ports", "10.0.0.2:8000"),
            ("x-kv-cache-source-host-port", "10.0.0.3:8000"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("x-request-id", "client-chosen"),
            ("Accept-Encoding", "gzip"),
            ("X-Custom", "a"),
            ("X-Custom", "b"),
        ]
    )


def test_plain_proxy_drops_hop_by_hop_and_routing_headers_only() -> None:
    out = upstream_request_headers(client_headers(), peer="10.9.9.9")
    assert sorted(k.lower() for k, _ in out.items()) == sorted(
        [
            "content-type",
            "content-length",
            "authorization",
            "x-request-id",
            "accept-encoding",
            "x-custom",
            "x-custom",
            "x-forwarded-for",
        ]
    )
    assert out.getall("X-Custom") == ["a", "b"]
    assert out["X-Forwarded-For"] == "1.2.3.4, 10.9.9.9"
    assert out["content-length"] == "42", "the body is streamed unchanged"


def test_forwarded_for_starts_with_the_peer() -> None:
    out = upstream_request_headers(CIMultiDict([("Accept", "*/*")]), peer="10.9.9.9")
    assert out["X-Forwarded-For"] == "10.9.9.9"


def test_leg_headers_share_a_fresh_request_id_and_recompute_the_length() -> None:
    out = leg_request_headers(client_headers(), peer=None, request_id="uuid-1")
    assert out.getall("x-request-id") == ["uuid-1"]
    assert "content-length" not in out
    assert out["Accept-Encoding"] == "identity"
    assert out["Content-Type"] == "application/json"
    assert out["Authorization"] == "Bearer token"
    assert "x-prefiller-host-port" not in out


def test_response_headers_keep_length_only_for_untouched_bodies() -> None:
    upstream = CIMultiDict(
        [("Content-Length", "10"), ("Connection", "close"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    )
    kept = client_response_headers(upstream, keep_length=True)
    assert kept["Content-Length"] == "10" and "connection" not in kept
    assert kept.getall("Set-Cookie") == ["a=1", "b=2"]
    assert "content-length" not in client_response_headers(upstream, keep_length=False)


def test_prefiller_candidates_from_lists_and_repeats() -> None:
    headers = CIMultiDict(
        [
            ("x-prefiller-host-port", " 10.0.0.1:8000 , 10.0.0.2:8000,"),
            ("X-Prefiller-Host-Port", "[fd00::1]:8000"),
        ]
    )
    assert prefiller_candidates(headers) == ["10.0.0.1:8000", "10.0.0.2:8000", "[fd00::1]:8000"]
    assert prefiller_candidates(CIMultiDict()) == []


def test_choose_first_or_sample() -> None:
    candidates = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]
    rng = random.Random(7)
    assert choose_prefiller(candidates, sample=False, rng=rng) == HostPort("10.0.0.1", 8000)
    sampled = {choose_prefiller(candidates, sample=True, rng=rng) for _ in range(200)}
    assert sampled == {HostPort.parse(c) for c in candidates}
    assert choose_prefiller([], sample=True, rng=rng) is None


def test_choose_rejects_a_malformed_value() -> None:
    with pytest.raises(ValueError):
        choose_prefiller(["evil.example/path:80"], sample=False, rng=random.Random())
