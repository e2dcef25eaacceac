"""Compressed request bodies on the P/D path. The sidecar must parse a P/D body as JSON, so it
decodes a `Content-Encoding` itself (the listener never does: plain proxying forwards compressed
bodies byte for byte) and sends the legs plain. The decoded size is bounded like the encoded one,
so a small compressed body cannot expand without limit (a decompression bomb)."""

from __future__ import annotations

import zlib

from epp.sidecar.errors import ProxyError

# zlib window bits: gzip framing, or the zlib framing HTTP calls "deflate".
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """`raw` with the codings of `content_encoding` undone, last applied first. Raises 415 for a
    coding other than gzip, deflate or identity, 400 for a corrupt body, 413 beyond `limit` bytes."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise ProxyError(
                415, f"Content-Encoding {coding!r} is not supported on P/D requests: use gzip or deflate"
            )
        raw = _inflate(raw, coding, wbits, limit)
    return raw


def _inflate(data: bytes, coding: str, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ProxyError(400, f"the request body is not valid {coding}: {exc}") from None
    if len(out) > limit:
        raise ProxyError(413, f"request body larger than {limit} bytes once decompressed")
    if not inflater.eof:
        raise ProxyError(400, f"the request body is truncated {coding}")
    return out
