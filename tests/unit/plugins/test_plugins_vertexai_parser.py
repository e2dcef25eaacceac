"""`vertexai-parser`: OpenAI bodies inside Vertex AI's gRPC envelopes, and usage from gRPC-framed
HttpBody responses. The envelopes are encoded here with protobuf's real HttpBody message."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from epp.config.build import build_director
from epp.config.loader import load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.plugins.vertexai_parser import GrpcHttpBodyUsageReader, VertexAIParser
from epp.requests import ApiKind, RequestError, Usage
from epp.requests.grpcwire import field_bytes, grpc_payload
from tests.unit.plugin_helpers import plugin

CONFIG = (
    Path(__file__).parents[2]
    / "data"
    / "upstream"
    / "configs"
    / (
        "llmd-router-ebab687__pkg__epp__framework__plugins__requesthandling__parsers__vertexai__README.md.yaml"
    )
)
CHAT = {"model": "gemma", "messages": [{"role": "user", "content": "hello there"}], "stream": True}


def _messages() -> tuple[type, type]:
    """HttpBody {content_type=1, data=2} and a request {endpoint=1, http_body=2}, as the real protos."""
    file = descriptor_pb2.FileDescriptorProto(name="vertex_test.proto", package="t", syntax="proto3")
    body = file.message_type.add(name="HttpBody")
    body.field.add(name="content_type", number=1, type=9, label=1)
    body.field.add(name="data", number=2, type=12, label=1)
    req = file.message_type.add(name="ChatCompletionsRequest")
    req.field.add(name="endpoint", number=1, type=9, label=1)
    req.field.add(name="http_body", number=2, type=11, label=1, type_name=".t.HttpBody")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("t.HttpBody")), get(
        pool.FindMessageTypeByName("t.ChatCompletionsRequest")
    )


HTTP_BODY, REQUEST = _messages()


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def envelope(body: dict) -> bytes:
    request = REQUEST(endpoint="projects/p/locations/l/endpoints/e")
    request.http_body.content_type = "application/json"
    request.http_body.data = orjson.dumps(body)
    return frame(request.SerializeToString())


def test_chat_completions_envelope_is_parsed_as_openai_chat() -> None:
    raw = envelope(CHAT)
    path = "/google.cloud.aiplatform.v1.PredictionService/ChatCompletions"
    request = plugin(VertexAIParser).parse(raw, path, {}, "r")
    assert (request.api, request.model, request.stream, request.path) == (ApiKind.CHAT, "gemma", True, path)
    assert request.body_size == len(raw) and b"hello there" in request.prompt


def test_raw_predict_carries_a_responses_body() -> None:
    raw = envelope({"model": "gemma", "input": "hi"})
    request = plugin(VertexAIParser).parse(raw, "/x.PredictionService/RawPredict", {}, "r")
    assert request.api is ApiKind.RESPONSES and request.model == "gemma"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00", "shorter than a gRPC frame header"),
        (b"\x01" + frame(b"")[1:], "compressed gRPC messages are not supported"),
        (b"\x00\x00\x00\x00\x09abc", "frame announces 9 bytes, 3 present"),
        (frame(REQUEST(endpoint="e").SerializeToString()), "ChatCompletionsRequest has no HttpBody"),
    ],
)
def test_bad_envelopes_are_400(raw: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        plugin(VertexAIParser).parse(raw, "/x.PredictionService/ChatCompletions", {}, "r")
    assert caught.value.code.status == 400


def test_openai_validation_applies_inside_the_envelope() -> None:
    with pytest.raises(RequestError, match="must have valid messages field"):
        plugin(VertexAIParser).parse(
            envelope({"model": "m"}), "/x.PredictionService/ChatCompletions", {}, "r"
        )


def test_other_methods_are_not_read() -> None:
    request = plugin(VertexAIParser).parse(b"\x00garbage", "/x.PredictionService/Explain", {}, "r")
    assert request.model == "" and request.api is ApiKind.OTHER


def test_protobuf_reader_against_the_real_encoding() -> None:
    message = REQUEST(endpoint="e" * 200)
    message.http_body.data = b"payload"
    wrapped = field_bytes(grpc_payload(frame(message.SerializeToString())), 2)
    assert wrapped is not None and field_bytes(wrapped, 2) == b"payload"
    assert field_bytes(b"", 2) is None
    with pytest.raises(ValueError, match="truncated"):
        field_bytes(b"\x12\x05ab", 2)


def response_frames(*datas: bytes) -> bytes:
    return b"".join(frame(HTTP_BODY(data=d).SerializeToString()) for d in datas)


def test_usage_from_grpc_framed_json_and_sse() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    reader = GrpcHttpBodyUsageReader(streaming=False)
    body = response_frames(orjson.dumps({"choices": [], "usage": usage}))
    reader.feed(body[:7], end_of_stream=False)  # frames split across chunks
    reader.feed(body[7:], end_of_stream=True)
    assert reader.usage == Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7)
    stream = GrpcHttpBodyUsageReader(streaming=True)
    chunks = [
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
        b"data: " + orjson.dumps({"usage": usage}) + b"\n\n",
    ]
    stream.feed(response_frames(*chunks), end_of_stream=True)
    assert stream.usage is not None and stream.usage.total_tokens == 7


def test_readme_config_routes_and_never_rewrites_the_grpc_body() -> None:
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=8000))
    store.synced = True
    director, _ = build_director(load_config_file(CONFIG), store, PluginContext())
    headers = {":path": "/google.cloud.aiplatform.v1.PredictionService/ChatCompletions"}
    routed = director.handle_body(envelope(CHAT), {**headers, "x-gateway-model-name-rewrite": "other"}, None)
    assert routed.destination == "10.0.0.1:8000"
    assert routed.body is None and routed.request.target_model == "gemma"
