"""Valid JSON bodies nested deeper than orjson writes, one per field the EPP re-serialises."""

from __future__ import annotations

import orjson

# Each field, with the levels its wrapper adds around it (the body object is level 1).
DEEP_FIELDS = [
    ("/v1/chat/completions", lambda v: {"messages": [{"role": "user", "content": "hi", "name": v}]}, 3),
    ("/v1/responses", lambda v: {"input": [{"role": "user", "content": "hi", "x": v}]}, 3),
    ("/v1/responses", lambda v: {"input": "hi", "tools": [{"type": "function", "parameters": v}]}, 3),
    ("/v1/conversations", lambda v: {"items": [{"type": "message", "content": v}]}, 3),
]


def deep_body(field: int, depth: int) -> bytes:
    """A valid body `depth` levels deep in the field, spliced as text (orjson writes 254 at most)."""
    _, wrap, wrapper_levels = DEEP_FIELDS[field]
    arrays = depth - wrapper_levels
    return orjson.dumps({"model": "m", **wrap("@@")}).replace(b'"@@"', b"[" * arrays + b"]" * arrays)
