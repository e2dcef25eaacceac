"""`vertexai-parser` (llm-d): Vertex AI's gRPC prediction API, whose requests wrap an OpenAI body.

As llm-d's, by the `:path` suffix: `PredictionService/ChatCompletions` carries a chat/completions
body, `PredictionService/StreamRawPredict` and `PredictionService/RawPredict` a Responses API body,
each as the `http_body` (field 2, a `google.api.HttpBody` whose `data` is field 2) of the request
message, in one uncompressed gRPC frame; the JSON is parsed as `openai-parser` parses that API
(same validation and 400s). Other paths are forwarded unread. The gRPC body is never rewritten
(the model-rewrite header does not apply), and responses — gRPC frames of `HttpBody` holding
OpenAI JSON or SSE chunks — give the usage."""

from __future__ import annotations

from typing import Any

import orjson

from epp.framework import Plugin, register
from epp.requestcontrol import RequestParser
from epp.requests import ApiKind, ErrorCode, InferenceRequest, RequestError
from epp.requests.grpcwire import FramedUsageReader, field_bytes, grpc_payload
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


class GrpcHttpBodyUsageReader(FramedUsageReader):
    """Each response frame's `HttpBody.data` is OpenAI JSON or SSE lines."""

    __slots__ = ()

    def frame(self, payload: bytes) -> None:
        data = field_bytes(payload, DATA_FIELD)
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
