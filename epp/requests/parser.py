"""OpenAI request bodies -> InferenceRequest, with GIE's validation messages for bad input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

from epp.requests.errors import ErrorCode, RequestError
from epp.requests.jsontext import (
    MAX_JSON_DEPTH,
    container_limit,
    dumps,
    exact,
    scan,
    shape,
    too_many_containers,
)
from epp.requests.tokenids import are_token_ids
from epp.requests.types import ApiKind, InferenceRequest

T = TypeVar("T")

_PATH_SUFFIXES: tuple[tuple[str, ApiKind], ...] = (
    ("/conversations", ApiKind.CONVERSATIONS),
    ("/responses", ApiKind.RESPONSES),
    ("/chat/completions", ApiKind.CHAT),
    ("/completions", ApiKind.COMPLETIONS),
    ("/embeddings", ApiKind.EMBEDDINGS),
)
INFERENCE_API_PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/conversations",
)
"""The OpenAI paths of the APIs parsed here: what the gateway routes by default (with /v1/models)."""
_TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_GZIP_MAGIC = b"\x1f\x8b"


def api_kind(path: str) -> ApiKind:
    """The API a path addresses, by suffix (query string ignored), as GIE's openai-parser does."""
    path = path.split("?", 1)[0].rstrip("/")
    for suffix, kind in _PATH_SUFFIXES:
        if path.endswith(suffix):
            return kind
    return ApiKind.OTHER


def _bad(message: str) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _completions_prompt(body: Mapping[str, Any]) -> tuple[bytes, list[int] | None]:
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt.encode(), None
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return " ".join(prompt).encode(), None
        if are_token_ids(prompt):
            return b"", prompt
        if all(isinstance(p, list) and p and are_token_ids(p) for p in prompt):
            return b"", [t for p in prompt for t in p]
        raise _bad("invalid completions request: prompt must be a string, a list of strings or token ids")
    if prompt is None:
        raise _bad("invalid completions request: must have prompt field")
    # Present but empty: vLLM refuses both with a 400 too (the string: "Either prompt or
    # prompt_embeds must be provided and non-empty."; the list: "please provide at least one prompt").
    if prompt == "":
        raise _bad("invalid completions request: prompt is an empty string")
    if prompt == []:
        raise _bad("invalid completions request: prompt is an empty list")
    raise _bad("invalid completions request: prompt must be a string, a list of strings or token ids")


def _chat_prompt(body: Mapping[str, Any]) -> bytes:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("invalid chat completions request: must have valid messages field")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad(f"invalid chat completions request: messages[{i}] must be an object with a role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"invalid chat completions request: messages[{i}].content must be a string or a list")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _check_content_part(part, f"messages[{i}].content[{j}]")
    return dumps(messages)


_PART_STRINGS = ("type", "text")
_PART_BLOCKS = {"image_url": ("url",), "input_audio": ("data", "format"), "video_url": ("url",)}
"""A content part's fields GIE's parser types (its ContentBlock): each may be absent or null, but a
value of another JSON type fails its parse, and vLLM's, with a 400; forwarding it would cost a model
server round trip and the decision made for a prompt the server refuses."""
_PART_URL_STRINGS = frozenset({"image_url", "video_url"})
"""Blocks vLLM also takes as a bare URL string (its "simple" parts, `{"image_url": "https://..."}`),
which GIE's typed parse refuses: accepted here, since the server serves them."""


def _check_content_part(part: object, where: str) -> None:
    if not isinstance(part, dict):
        raise _bad(f"invalid chat completions request: {where} must be an object")
    for name in _PART_STRINGS:
        if part.get(name) is not None and not isinstance(part[name], str):
            raise _bad(f"invalid chat completions request: {where}.{name} must be a string")
    for block, fields in _PART_BLOCKS.items():
        value = part.get(block)
        if value is None or (block in _PART_URL_STRINGS and isinstance(value, str)):
            continue
        if not isinstance(value, dict):
            raise _bad(f"invalid chat completions request: {where}.{block} must be an object")
        for name in fields:
            if value.get(name) is not None and not isinstance(value[name], str):
                raise _bad(f"invalid chat completions request: {where}.{block}.{name} must be a string")


def _responses_prompt(body: Mapping[str, Any]) -> bytes:
    if body.get("input") in (None, "", []):
        raise _bad("invalid responses request: must have input field")
    if not isinstance(body["input"], str | list):
        raise _bad("invalid responses request: input must be a string or a list of input items")
    parts: list[bytes] = []
    if body.get("instructions"):
        parts.append(dumps({"instructions": body["instructions"]}))
    if body.get("tools"):
        parts.append(dumps({"tools": body["tools"]}))
    parts.append(dumps({"input": body["input"]}))
    # The bytes of dumps(parts), written part by part so they nest no deeper than the body.
    return b"[" + b",".join(parts) + b"]"


def _embeddings_prompt(body: Mapping[str, Any]) -> tuple[bytes, list[int] | None]:
    value = body.get("input")
    if value in (None, "", []):
        raise _bad("invalid embeddings request: must have input field")
    if isinstance(value, list) and are_token_ids(value):
        return b"", value
    valid_list = isinstance(value, list) and all(_is_embedding_item(v) for v in value)
    if not (isinstance(value, str) or valid_list):
        raise _bad(
            "invalid embeddings request: input must be a string, a list of strings, "
            "token ids or lists of token ids"
        )
    return (value.encode() if isinstance(value, str) else dumps(value)), None


def _is_embedding_item(item: object) -> bool:
    return isinstance(item, str) or (isinstance(item, list) and bool(item) and are_token_ids(item))


def _conversations_prompt(body: Mapping[str, Any]) -> bytes:
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise _bad("invalid conversations request: must have items field")
    return dumps(items)


def _token_limit(body: Mapping[str, Any]) -> int | None:
    """The smallest of the body's output-token limits. A whole number written as a float (`512.0`,
    `1e3`: what a Python client computing the limit sends) counts, as vLLM's validation and Go's
    MaxOutputTokensFromPayload take it; a fraction, a negative or a non-number is a 400."""
    limit: int | None = None
    for name in _TOKEN_LIMIT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_int(value) or value < 0:
            raise _bad(f"{name} must be a non-negative integer")
        limit = value if limit is None else min(limit, value)
    return limit


def _optional(body: Mapping[str, Any], name: str, kind: type[T], default: T, what: str) -> T:
    """An optional field's value, `default` when absent or null (how clients that write every
    optional field say "unset": OpenAI's API types these "boolean or null", "string or null", and
    vLLM and GIE take null as absent); a 400 naming `what` it must be otherwise."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise _bad(f"{name} must be {what}")
    return value


def _too_deep() -> RequestError:
    return _bad(
        f"error unmarshaling request body: objects and arrays are nested deeper than the limit of "
        f"{MAX_JSON_DEPTH} levels"
    )


def _not_utf8(raw: bytes) -> RequestError | None:
    """A 400 saying where the body stops being UTF-8 (orjson's own message points at its first
    byte whatever the place), or that it is gzip, which neither the gateway nor vLLM inflates."""
    if raw.startswith(_GZIP_MAGIC):
        return _bad(
            "error unmarshaling request body: the body is gzip-compressed; send it uncompressed "
            "(the gateway and the model servers do not decode a request's Content-Encoding)"
        )
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return _bad(f"error unmarshaling request body: the body is not valid UTF-8 (byte {exc.start})")
    return None


def _too_many_containers() -> RequestError:
    return _bad(
        f"error unmarshaling request body: the body holds more than {container_limit()} JSON arrays "
        "and objects (--max-json-containers)"
    )


def decode_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 naming what is wrong with it. Its integers are as
    written, beyond 64 bits too (`epp.requests.jsontext`). A body with more arrays and objects
    than MAX_JSON_CONTAINERS is refused before it is parsed (without the C scan, after)."""
    found = shape(raw)
    if found is not None and too_many_containers(raw, found):
        raise _too_many_containers()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own reading limit, 1,024 levels
            raise _too_deep() from None
        raise _not_utf8(raw) or _bad(f"error unmarshaling request body: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("error unmarshaling request body: the body must be a JSON object")
    if found is None and too_many_containers(raw, None, body):
        raise _too_many_containers()
    too_deep, long_number = scan(raw, body, found)
    if too_deep:
        raise _too_deep()
    return exact(raw) if long_number else body


def parse_request(raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
    """Validate and parse an OpenAI-style body. Raises RequestError (400) for bad input."""
    body = decode_body(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model not found in request body")
    stream = _optional(body, "stream", bool, False, "a boolean")
    cache_salt = _optional(body, "cache_salt", str, "", "a string")

    kind = api_kind(path)
    token_ids: list[int] | None = None
    if kind is ApiKind.COMPLETIONS:
        prompt, token_ids = _completions_prompt(body)
    elif kind is ApiKind.CHAT:
        prompt = _chat_prompt(body)
    elif kind is ApiKind.RESPONSES:
        prompt = _responses_prompt(body)
    elif kind is ApiKind.EMBEDDINGS:
        prompt, token_ids = _embeddings_prompt(body)
    elif kind is ApiKind.CONVERSATIONS:
        prompt = _conversations_prompt(body)
    else:
        prompt = b""

    return InferenceRequest(
        request_id=request_id,
        api=kind,
        path=path,
        model=model,
        headers=headers,
        prompt=prompt,
        token_ids=token_ids,
        stream=stream,
        max_tokens=_token_limit(body),
        cache_salt=cache_salt,
        body=body,
        body_size=len(raw),
    )
