"""`anthropic-parser` (llm-d): Anthropic's Messages API (`/v1/messages`), e.g. for coding agents
talking to a vLLM that serves it.

As llm-d's: claims the path suffixes `messages` and `messages/count_tokens`. `count_tokens`
bodies are not read (like `passthrough-parser`: no model, every ready endpoint a candidate).
`messages` needs a JSON object with at least one message (else 400 `invalid messages request: must
have at least one message`); `model` (when a string) selects the model, `stream: true` marks a
streaming request, `max_tokens` the output limit. A path ending otherwise is refused (400
`unsupported API endpoint`). The prefix-cache plugins hash the `system` prompt, `tools` and
`messages` in that order (as JSON; only this EPP reads those bytes).

Responses report usage Anthropic's way, read as llm-d does: `input_tokens` (prompt),
`output_tokens` (completion), `cache_read_input_tokens` (cached); streamed, from the
`message_start` (input, cached) and `message_delta` (output) events; total = input + output."""

from __future__ import annotations

from typing import Any

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser
from epp.requests import ApiKind, ErrorCode, InferenceRequest, RequestError, Usage
from epp.requests.jsontext import dumps
from epp.requests.parser import decode_body
from epp.requests.usage import UsageReader


@register
class AnthropicParser(Plugin, RequestParser):
    type_name = "anthropic-parser"
    paths = ("messages", "messages/count_tokens")

    def parse(self, raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
        clean = path.split("?", 1)[0].rstrip("/")
        if clean.endswith("/messages/count_tokens"):
            return InferenceRequest(request_id, ApiKind.OTHER, path, "", headers, body_size=len(raw))
        if not clean.endswith("/messages"):
            raise RequestError(ErrorCode.BAD_REQUEST, f"unsupported API endpoint: {clean}")
        body = decode_body(raw)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(
                ErrorCode.BAD_REQUEST, "invalid messages request: must have at least one message"
            )
        model = body.get("model")
        max_tokens = body.get("max_tokens")
        salt = body.get("cache_salt")
        prompt = [{"system": body["system"]}] if body.get("system") else []
        if body.get("tools"):
            prompt.append({"tools": body["tools"]})
        prompt.append({"messages": messages})
        return InferenceRequest(
            request_id=request_id,
            api=ApiKind.OTHER,
            path=path,
            model=model if isinstance(model, str) else "",
            headers=headers,
            prompt=dumps(prompt),
            stream=body.get("stream") is True,
            max_tokens=max_tokens
            if isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
            else None,
            cache_salt=salt if isinstance(salt, str) else "",
            body=body,
            body_size=len(raw),
        )

    def usage_reader(self, streaming: bool) -> UsageReader:
        return AnthropicUsageReader(streaming)


class AnthropicUsageReader(UsageReader):
    __slots__ = ()

    def found(self, document: Any) -> None:
        if not isinstance(document, dict):
            return
        event = document.get("type")
        usage = self.usage or Usage()
        if event == "message_start" and isinstance(document.get("message"), dict):
            counts = document["message"].get("usage")
            if not isinstance(counts, dict):
                return
            usage.prompt_tokens = _int(counts.get("input_tokens"), usage.prompt_tokens)
            usage.cached_tokens = _int(counts.get("cache_read_input_tokens"), usage.cached_tokens)
        elif event == "message_delta" and isinstance(document.get("usage"), dict):
            usage.completion_tokens = _int(document["usage"].get("output_tokens"), usage.completion_tokens)
        elif not self.streaming and isinstance(document.get("usage"), dict):
            counts = document["usage"]
            usage.prompt_tokens = _int(counts.get("input_tokens"), 0)
            usage.completion_tokens = _int(counts.get("output_tokens"), 0)
            usage.cached_tokens = _int(counts.get("cache_read_input_tokens"), 0)
        else:
            return
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        self.usage = usage


def _int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
