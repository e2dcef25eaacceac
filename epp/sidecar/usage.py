"""Rewrite `cached_tokens` in the decode reply to the prefiller's figure. The decoder received the
whole prompt's KV over NIXL and would report it ~100 % cached (llm-d#2447); billing and cache
dashboards need what the prefiller actually found in its cache."""

from __future__ import annotations

from typing import Any

import orjson

from epp.requests.jsontext import dumps, loads
from epp.requests.usage import USAGE_DETAILS_KEYS, usage_objects

_MARKER = b'"cached_tokens"'


def prefiller_cached_tokens(reply: Any) -> int:
    """The prefiller's own cache hit; 0 when it reports none."""
    for usage in usage_objects(reply):
        for key in USAGE_DETAILS_KEYS:
            details = usage.get(key)
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                return int(details["cached_tokens"])
    return 0


def set_cached_tokens(document: Any, cached_tokens: int) -> bool:
    """Correct a figure the engine reported; details the engine omitted are not invented."""
    changed = False
    for usage in usage_objects(document):
        for key in USAGE_DETAILS_KEYS:
            details = usage.get(key)
            if isinstance(details, dict) and "cached_tokens" in details:
                details["cached_tokens"] = cached_tokens
                changed = True
    return changed


def rewrite_json(payload: bytes, cached_tokens: int) -> bytes:
    """A complete JSON reply; anything unparsable, without the figure, or nested deeper than
    orjson writes (254 levels; it reads 1,024) passes unchanged."""
    if _MARKER not in payload:
        return payload
    try:
        document = loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if not set_cached_tokens(document, cached_tokens):
        return payload
    try:
        return dumps(document)
    except orjson.JSONEncodeError:
        return payload


class SseRewriter:
    """Rewrites `data:` lines of an event stream as they complete, holding back only a partial
    line, so tokens still reach the client as soon as the decoder emits them."""

    def __init__(self, cached_tokens: int) -> None:
        self._cached_tokens = cached_tokens
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if not cut:
            return b""
        return b"".join(self._line(line) for line in data[:cut].splitlines(keepends=True))

    def flush(self) -> bytes:
        rest, self._partial = self._partial, b""
        return self._line(rest) if rest else b""

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data:") or _MARKER not in line:
            return line
        content = line.rstrip(b"\r\n")
        ending = line[len(content) :]
        field_end = 6 if content.startswith(b"data: ") else 5
        return content[:field_end] + rewrite_json(content[field_end:], self._cached_tokens) + ending
