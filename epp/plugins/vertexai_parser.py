"""`vertexai-parser` (llm-d): Vertex AI's gRPC prediction API, whose requests wrap an OpenAI body.

As llm-d's, by the `:path` suffix: `PredictionService/ChatCompletions` carries a chat/completions
body, `PredictionService/StreamRawPredict` and `PredictionService/RawPredict` a Responses API body,
each as the `http_body` (field 2, a `google.api.HttpBody` whose `data` is field 2) of the request
message, in one uncompressed gRPC frame; the JSON is parsed as `openai-parser` parses that API
(same validation and 400s). Other paths are forwarded unread. The gRPC body is never rewritten
(the model-rewrite header does not apply), and responses — gRPC frames of `HttpBody` holding
OpenAI JSON or SSE chunks — give the usage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser
from epp.requests import ApiKind, ErrorCode, InferenceRequest, RequestError
from epp.requests.parser import parse_request
from epp.requests.usage import UsageReader

# gRPC method suffix -> the OpenAI path whose body it carries.
METHODS = {
    "PredictionService/ChatCompletions": "/v1/chat/completions",
    "PredictionService/StreamRawPredict": "/v1/responses",
    "PredictionService/RawPredict": "/v1/responses",
}
HTTP_BODY_FIELD = 2  # of ChatCompletionsRequest, RawPredictRequest, StreamRawPredictRequest
DATA_FIELD = 2  # of google.api.HttpBody


@register
class VertexAIParser(Plugin, RequestParser):
    type_name = "vertexai-parser"
    paths = tuple(METHODS)
    rewrites_body = False

    def parse(self, raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
        clean = path.split("?", 1)[0].rstrip("/")
        method = next((m for m in METHODS if clean.endswith(m)), None)
        if method is None:
            return InferenceRequest(request_id, ApiKind.OTHER, path, "", headers, body_size=len(raw))
        name = method.rsplit("/", 1)[1] + "Request"
        try:
            message = grpc_payload(raw)
            wrapped = field_bytes(message, HTTP_BODY_FIELD)
            if wrapped is None:
                raise ValueError(f"{name} has no HttpBody")
            data = field_bytes(wrapped, DATA_FIELD) or b""
        except ValueError as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, f"invalid or unsupported gRPC payload: {exc}") from None
        request = parse_request(data, METHODS[method], headers, request_id)
        request.path = path
        request.body_size = len(raw)
        return request

    def usage_reader(self, streaming: bool) -> UsageReader:
        return GrpcHttpBodyUsageReader(streaming)


class GrpcHttpBodyUsageReader(UsageReader):
    """Reassembles the response's gRPC frames; each `HttpBody.data` is OpenAI JSON or SSE lines."""

    __slots__ = ("_frames",)

    def __init__(self, streaming: bool) -> None:
        super().__init__(streaming)
        self._frames = bytearray()

    def feed(self, chunk: bytes, end_of_stream: bool) -> None:
        self._frames += chunk
        while len(self._frames) >= 5:
            length = int.from_bytes(self._frames[1:5], "big")
            if len(self._frames) < 5 + length:
                break
            payload = bytes(self._frames[5 : 5 + length])
            compressed = self._frames[0] != 0
            del self._frames[: 5 + length]
            if compressed:
                continue
            try:
                data = field_bytes(payload, DATA_FIELD)
            except ValueError:
                continue
            if data:
                self._read(data)

    def _read(self, data: bytes) -> None:
        if data.lstrip().startswith(b"data:"):
            for line in data.split(b"\n"):
                if line.startswith(b"data:") and b'"usage"' in line:
                    self._json(line[5:].strip())
        else:
            self._json(data)

    def _json(self, text: bytes) -> None:
        try:
            document: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        self.found(document)


def grpc_payload(body: bytes) -> bytes:
    """The message of one gRPC length-prefixed frame (compression flag 0)."""
    if len(body) < 5:
        raise ValueError("shorter than a gRPC frame header")
    if body[0] != 0:
        raise ValueError("compressed gRPC messages are not supported")
    length = int.from_bytes(body[1:5], "big")
    if len(body) < 5 + length:
        raise ValueError(f"gRPC frame announces {length} bytes, {len(body) - 5} present")
    return body[5 : 5 + length]


def field_bytes(message: bytes, number: int) -> bytes | None:
    """The last length-delimited field `number` of a protobuf message (proto3: last one wins)."""
    found: bytes | None = None
    for field, value in _fields(message):
        if field == number and isinstance(value, bytes):
            found = value
    return found


def _fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(message, position)
            yield number, value
        elif wire == 1:
            position += 8
        elif wire == 2:
            length, position = _varint(message, position)
            if position + length > len(message):
                raise ValueError("truncated protobuf field")
            yield number, message[position : position + length]
            position += length
        elif wire == 5:
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if position > len(message):
            raise ValueError("truncated protobuf field")


def _varint(message: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(message) or shift > 63:
            raise ValueError("truncated protobuf varint")
        byte = message[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
