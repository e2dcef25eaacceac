"""Token usage read from model-server responses: a final JSON body or the SSE chunk carrying `usage`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import orjson

from epp.requests.types import Usage

_MAX_BUFFERED = 8 * 1024 * 1024
_MAX_PARTIAL_LINE = 1024 * 1024
# Chat/completions report `prompt_tokens_details`; the Responses API reports `input_tokens_details`.
USAGE_DETAILS_KEYS = ("prompt_tokens_details", "input_tokens_details")


def usage_objects(document: Any) -> Iterator[dict[str, Any]]:
    """Usage objects at the top level and, for Responses API stream events, under `response`."""
    if not isinstance(document, dict):
        return
    for holder in (document, document.get("response")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            yield holder["usage"]


def usage_from_object(obj: Any) -> Usage | None:
    """Usage from a response or chunk object, by its `object`/`type` as the OpenAI APIs name fields."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if obj.get("type") == "response.completed" and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    details = usage.get(USAGE_DETAILS_KEYS[0]) or usage.get(USAGE_DETAILS_KEYS[1]) or {}
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    total = usage.get("total_tokens", 0)
    ints = [v if isinstance(v, int) else 0 for v in (prompt, completion, cached or 0, total)]
    return Usage(
        prompt_tokens=ints[0], completion_tokens=ints[1], cached_tokens=ints[2], total_tokens=ints[3]
    )


def response_id_of(document: Any) -> str | None:
    """A Responses API response's id: of the document itself (a JSON answer) or of the `response`
    a stream event carries."""
    if not isinstance(document, dict):
        return None
    for holder in (document, document.get("response")):
        if (
            isinstance(holder, dict)
            and holder.get("object") == "response"
            and isinstance(holder.get("id"), str)
        ):
            return str(holder["id"])
    return None


class UsageReader:
    """Fed response body chunks as they pass; keeps the last usage seen. SSE lines are reassembled
    across chunks (GIE requires usage to sit inside one chunk; we do not)."""

    __slots__ = ("_buffer", "_partial", "response_id", "streaming", "usage")
    # Only SSE events containing this are decoded (the cheap pre-filter on every chunk).
    marker: ClassVar[bytes] = b'"usage"'

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.usage: Usage | None = None
        # The Responses API response's id, read from the JSON answer or a stream's events (its
        # closing `response.completed` carries usage, so it passes the marker's pre-filter).
        self.response_id: str | None = None
        self._buffer = bytearray()
        self._partial = b""

    def feed(self, chunk: bytes, end_of_stream: bool) -> None:
        if self.streaming:
            self._feed_sse(chunk, end_of_stream)
        else:
            if len(self._buffer) + len(chunk) <= _MAX_BUFFERED:
                self._buffer += chunk
            if end_of_stream:
                self._finish_json()

    def _feed_sse(self, chunk: bytes, end_of_stream: bool) -> None:
        data = self._partial + chunk if self._partial else chunk
        if self.marker not in data:
            # Most chunks (every token's but the last) carry no usage: keep only the unfinished
            # line, without splitting the chunk into lines.
            tail = data[data.rfind(b"\n") + 1 :]
            self._partial = b"" if end_of_stream or len(tail) > _MAX_PARTIAL_LINE else tail
            return
        lines = data.split(b"\n")
        self._partial = b"" if end_of_stream else lines.pop()
        if len(self._partial) > _MAX_PARTIAL_LINE:
            self._partial = b""
        for line in lines:
            if line.startswith(b"data:") and self.marker in line:
                payload = line[5:].strip()
                try:
                    document = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                self.found(document)

    def _finish_json(self) -> None:
        if not self._buffer:
            return
        try:
            document = orjson.loads(bytes(self._buffer))
        except orjson.JSONDecodeError:
            document = None
        self.found(document)
        self._buffer.clear()

    def found(self, document: Any) -> None:
        """A response document or SSE event that may carry usage (an API's reader overrides this)."""
        usage = usage_from_object(document)
        if usage is not None:
            self.usage = usage
        # Not only with usage: a background response's answer (status `queued`) has none yet.
        self.response_id = response_id_of(document) or self.response_id
