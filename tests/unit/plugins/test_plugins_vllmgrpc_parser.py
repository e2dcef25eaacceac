"""`vllmgrpc-parser`: vLLM's gRPC engine requests and responses, encoded here with protobuf's own
encoder from the field numbers of vLLM's vllm_engine.proto."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from epp.config.build import build_director
from epp.config.loader import load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.plugins.vllmgrpc_parser import VllmGRPCParser, VllmGrpcUsageReader
from epp.requests import ApiKind, RequestError, Usage
from epp.requests.grpcwire import varints
from tests.unit.plugin_helpers import plugin

CONFIGS = Path(__file__).parents[2] / "data" / "upstream" / "configs"
GENERATE = "/vllm.grpc.engine.VllmEngine/Generate"
EMBED = "/vllm.grpc.engine.VllmEngine/Embed"
U32, STR, BOOL, MSG, FLOAT = 13, 9, 8, 11, 2
OPTIONAL, REPEATED = 1, 3


def _classes() -> dict[str, type]:
    file = descriptor_pb2.FileDescriptorProto(name="vllm_test.proto", package="v", syntax="proto3")

    def message(name: str, *spec: tuple[str, int, int, int, str]) -> None:
        m = file.message_type.add(name=name)
        for field, number, kind, label, type_name in spec:
            f = m.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                f.type_name = type_name

    message("TokenizedInput", ("original_text", 1, STR, OPTIONAL, ""), ("input_ids", 2, U32, REPEATED, ""))
    message("SamplingParams", ("max_tokens", 8, U32, OPTIONAL, ""))
    message(
        "GenerateRequest",
        ("request_id", 1, STR, OPTIONAL, ""),
        ("tokenized", 2, MSG, OPTIONAL, ".v.TokenizedInput"),
        ("text", 3, STR, OPTIONAL, ""),
        ("sampling_params", 4, MSG, OPTIONAL, ".v.SamplingParams"),
        ("stream", 5, BOOL, OPTIONAL, ""),
    )
    message(
        "EmbedRequest",
        ("request_id", 1, STR, OPTIONAL, ""),
        ("tokenized", 2, MSG, OPTIONAL, ".v.TokenizedInput"),
    )
    message(
        "GenerateStreamChunk",
        ("token_ids", 1, U32, REPEATED, ""),
        ("prompt_tokens", 2, U32, OPTIONAL, ""),
        ("completion_tokens", 3, U32, OPTIONAL, ""),
        ("cached_tokens", 4, U32, OPTIONAL, ""),
    )
    message(
        "GenerateComplete",
        ("output_ids", 1, U32, REPEATED, ""),
        ("finish_reason", 2, STR, OPTIONAL, ""),
        ("prompt_tokens", 3, U32, OPTIONAL, ""),
        ("completion_tokens", 4, U32, OPTIONAL, ""),
        ("cached_tokens", 5, U32, OPTIONAL, ""),
    )
    message(
        "GenerateResponse",
        ("chunk", 1, MSG, OPTIONAL, ".v.GenerateStreamChunk"),
        ("complete", 2, MSG, OPTIONAL, ".v.GenerateComplete"),
    )
    message("EmbedResponse", ("embedding", 1, FLOAT, REPEATED, ""), ("prompt_tokens", 2, U32, OPTIONAL, ""))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v.{m.name}"))
        for m in file.message_type
    }


PB = _classes()


def frame(message: object) -> bytes:
    data = message.SerializeToString()  # type: ignore[attr-defined]
    return b"\x00" + len(data).to_bytes(4, "big") + data


def test_generate_with_token_ids() -> None:
    request = PB["GenerateRequest"](request_id="r", stream=True)
    request.tokenized.input_ids.extend([101, 7, 300000])
    request.sampling_params.max_tokens = 64
    parsed = plugin(VllmGRPCParser).parse(frame(request), GENERATE, {}, "r")
    assert (parsed.api, parsed.model, parsed.token_ids) == (ApiKind.COMPLETIONS, "", [101, 7, 300000])
    assert parsed.stream and parsed.max_tokens == 64 and parsed.prompt_tokens == 3


def test_generate_with_text_and_embed() -> None:
    text = plugin(VllmGRPCParser).parse(frame(PB["GenerateRequest"](text="hello world")), GENERATE, {}, "r")
    assert (
        text.prompt == b"hello world"
        and text.token_ids is None
        and not text.stream
        and text.max_tokens is None
    )
    embed = PB["EmbedRequest"](request_id="e")
    embed.tokenized.input_ids.extend([5, 6])
    parsed = plugin(VllmGRPCParser).parse(frame(embed), EMBED, {}, "r")
    assert parsed.api is ApiKind.EMBEDDINGS and parsed.token_ids == [5, 6]


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        (b"\x00\x00\x00", GENERATE, "invalid or unsupported gRPC payload"),
        (frame(PB["GenerateRequest"](request_id="r")), GENERATE, "not supported request inputType"),
        (frame(PB["EmbedRequest"](request_id="r")), EMBED, "missing tokenized input in EmbedRequest"),
    ],
)
def test_refused(raw: bytes, path: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        plugin(VllmGRPCParser).parse(raw, path, {}, "r")
    assert caught.value.code.status == 400


def test_other_methods_unread() -> None:
    assert (
        plugin(VllmGRPCParser).parse(b"junk", "/vllm.grpc.engine.VllmEngine/Health", {}, "r").api
        is ApiKind.OTHER
    )


def test_unpacked_repeated_ids_decode_too() -> None:
    unpacked = b"\x10\x01\x10\x96\x01"  # field 2 as two separate varints: 1, 150
    assert varints(unpacked, 2) == [1, 150]


def test_usage_from_stream_chunks_complete_and_embed() -> None:
    reader = VllmGrpcUsageReader(streaming=True)
    first = PB["GenerateResponse"]()
    first.chunk.token_ids.extend([1])
    first.chunk.prompt_tokens, first.chunk.completion_tokens = 9, 1
    last = PB["GenerateResponse"]()
    last.complete.prompt_tokens, last.complete.completion_tokens, last.complete.cached_tokens = 9, 4, 8
    data = frame(first) + frame(last)
    reader.feed(data[:6], end_of_stream=False)
    reader.feed(data[6:], end_of_stream=True)
    assert reader.usage == Usage(prompt_tokens=9, completion_tokens=4, cached_tokens=8, total_tokens=13)
    embed = VllmGrpcUsageReader(streaming=False)
    response = PB["EmbedResponse"](prompt_tokens=12)
    response.embedding.extend([0.5, 0.25])
    embed.feed(frame(response), end_of_stream=True)
    assert embed.usage == Usage(prompt_tokens=12, total_tokens=12)


@pytest.mark.parametrize(
    "config",
    [
        "gie-1748e82__pkg__epp__framework__plugins__requesthandling__parsers__README.md.yaml",
        "llmd-router-ebab687__pkg__epp__framework__plugins__requesthandling__parsers__README.md__1.yaml",
    ],
)
def test_upstream_parser_readme_configs_route_grpc_generate(config: str) -> None:
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=8000, models=frozenset({"served"})))
    store.synced = True
    director, _ = build_director(load_config_file(CONFIGS / config), store, PluginContext())
    request = PB["GenerateRequest"](text="hi")
    routed = director.handle_body(
        frame(request), {":path": GENERATE, "x-gateway-model-name-rewrite": "x"}, None
    )
    assert routed.destination == "10.0.0.1:8000" and routed.body is None
