"""llm-d's UDS tokenizer protocol: the wire format checked byte for byte against protobuf's
encoding rules, and `token-producer` talking to a gRPC server on a real Unix socket that serves
`tokenization.TokenizationService` as llm-d's sidecar does."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from epp.datalayer.tokenize import MultiModalFeature, TokenizedPrompt
from epp.datalayer.uds_tokenizer import MESSAGES, SERVICE, chat_request
from epp.plugins.token_producer import TokenProducer
from epp.requests import ApiKind, InferenceRequest
from tests.unit.plugin_helpers import plugin


def test_messages_encode_as_llm_d_proto_fields() -> None:
    """Field numbers and wire types of tokenizer.proto: (number << 3 | wire type), then the value."""
    completion = MESSAGES["RenderCompletionRequest"](model_name="m", prompt="hi")
    assert completion.SerializeToString() == b"\x0a\x01m" + b"\x12\x02hi"
    body = {"messages": [{"role": "user", "content": "yo"}], "tools": [{"t": 1}]}
    encoded = chat_request(body, "m").SerializeToString()
    message = b"\x0a\x04user" + b"\x12\x02yo"  # role 1, content 2
    tools = b'[{"t":1}]'
    assert encoded == (
        b"\x0a\x01m"
        + b"\x12"
        + bytes([len(message)])
        + message
        + b"\x1a"
        + bytes([len(tools)])
        + tools
        # add_generation_prompt (5, optional): present even when it is the default
        + b"\x28\x01"
    )
    # a reply: request_id 1, token_ids 2 (packed varints), features 3 (maps as repeated key/value
    # entries: mm_hashes {image: [h]}, mm_placeholders {image: [{offset 3, length 2}]}), success 4
    ranges = b"\x0a\x04\x08\x03\x10\x02"
    entry = b"\x0a\x05image\x12" + bytes([len(ranges)]) + ranges
    features = b"\x0a\x0c\x0a\x05image\x12\x03\x0a\x01h" + b"\x12" + bytes([len(entry)]) + entry
    reply = b"\x0a\x02id\x12\x03\x05\x06\x07\x1a" + bytes([len(features)]) + features + b"\x20\x01"
    decoded = MESSAGES["RenderChatCompletionResponse"].FromString(reply)
    assert list(decoded.token_ids) == [5, 6, 7] and decoded.success
    assert list(decoded.features.mm_hashes["image"].values) == ["h"]
    assert decoded.features.mm_placeholders["image"].ranges[0].offset == 3


@dataclass
class Sidecar:
    """A TokenizationService on a Unix socket: token ids are the UTF-8 bytes of what it was asked,
    so a test can tell what reached it; `fail` makes it answer success=false."""

    path: str
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail: bool = False

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(method: str, answer: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
            request_type = MESSAGES[f"{method}Request"]

            async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
                self.calls.append((method, request))
                return answer(request)

            return grpc.unary_unary_rpc_method_handler(
                handle,
                request_deserializer=request_type.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        def render_chat(request: Any) -> Any:
            if self.fail:
                return MESSAGES["RenderChatCompletionResponse"](success=False, error_message="no such model")
            text = "".join(m.content or "".join(p.text for p in m.content_parts) for m in request.messages)
            reply = MESSAGES["RenderChatCompletionResponse"](success=True, token_ids=list(text.encode()))
            if any(p.type == "image_url" for m in request.messages for p in m.content_parts):
                reply.features.mm_hashes["image"].values.append("img-hash")
                reply.features.mm_placeholders["image"].ranges.add(offset=1, length=4)
            return reply

        methods = {
            "InitializeTokenizer": unary(
                "InitializeTokenizer", lambda r: MESSAGES["InitializeTokenizerResponse"](success=True)
            ),
            "RenderCompletion": unary(
                "RenderCompletion",
                lambda r: MESSAGES["RenderCompletionResponse"](
                    success=True, token_ids=list(r.prompt.encode())
                ),
            ),
            "RenderChatCompletion": unary("RenderChatCompletion", render_chat),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    directory = tempfile.mkdtemp(prefix="uds", dir="/tmp")  # socket paths must stay under 108 bytes
    side = Sidecar(f"{directory}/tokenizer-uds.socket")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((side.handlers(),))
    assert server.add_insecure_port(f"unix:{side.path}") == 1
    await server.start()
    yield side
    await server.stop(None)
    shutil.rmtree(directory)


def _request(api: ApiKind, body: dict[str, Any]) -> InferenceRequest:
    return InferenceRequest("r", api, "/v1/x", "m", {}, body={"model": "m", **body})


async def test_token_producer_renders_through_the_sidecar(sidecar: Sidecar) -> None:
    producer = plugin(TokenProducer, {"modelName": "m", "udsTokenizerConfig": {"socketFile": sidecar.path}})
    assert producer.backend == "uds"
    parts = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "http://i/x.png"}}]
    chat = _request(ApiKind.CHAT, {"messages": [{"role": "user", "content": parts}], "tools": [{"a": 1}]})
    await producer.prepare_async(chat)
    assert chat.attributes[producer.name] == TokenizedPrompt(
        list(b"see"), "uds", (MultiModalFeature("image", "img-hash", 1, 4),)
    )
    completion = _request(ApiKind.COMPLETIONS, {"prompt": "hello"})
    await producer.prepare_async(completion)
    assert completion.attributes[producer.name] == TokenizedPrompt(list(b"hello"), "uds")
    await producer.prepare_async(_request(ApiKind.COMPLETIONS, {"prompt": "hello"}))  # cached: no call
    assert [name for name, _ in sidecar.calls] == [
        "InitializeTokenizer",
        "RenderChatCompletion",
        "RenderCompletion",
    ]
    init, sent = sidecar.calls[0][1], sidecar.calls[1][1]
    assert init.model_name == "m" and init.add_generation_prompt
    assert sent.model_name == "m" and sent.add_generation_prompt and sent.tools_json == '[{"a":1}]'
    assert [(p.type, p.text, p.image_url.url) for p in sent.messages[0].content_parts] == [
        ("text", "see", ""),
        ("image_url", "", "http://i/x.png"),
    ]
    await producer.stop()


async def test_sidecar_failures_fall_back_counted(sidecar: Sidecar) -> None:
    sidecar.fail = True
    producer = plugin(TokenProducer, {"modelName": "m", "udsTokenizerConfig": {"socketFile": sidecar.path}})
    chat = _request(ApiKind.CHAT, {"messages": [{"role": "user", "content": "x"}]})
    await producer.prepare_async(chat)
    assert producer.name not in chat.attributes
    assert producer.metrics.tokenization_fallbacks.labels("uds", "rejected")._value.get() == 1
    await producer.stop()
    absent = plugin(
        TokenProducer, {"modelName": "m", "udsTokenizerConfig": {"socketFile": sidecar.path + ".gone"}}
    )
    await absent.prepare_async(_request(ApiKind.COMPLETIONS, {"prompt": "x"}))
    await absent.prepare_async(_request(ApiKind.COMPLETIONS, {"prompt": "y"}))  # no retry within a second
    assert absent.metrics.tokenization_fallbacks.labels("uds", "connection")._value.get() == 1
    assert absent.metrics.tokenization_fallbacks.labels("uds", "uninitialized")._value.get() == 1
    await absent.stop()


async def test_model_tokenizer_map_names_the_sidecars_model(sidecar: Sidecar) -> None:
    config = {"socketFile": sidecar.path, "modelTokenizerMap": {"m": "/models/llama/tokenizer.json"}}
    producer = plugin(TokenProducer, {"modelName": "m", "udsTokenizerConfig": config})
    await producer.prepare_async(_request(ApiKind.COMPLETIONS, {"prompt": "x"}))
    assert {request.model_name for _, request in sidecar.calls} == {"/models/llama"}
    await producer.stop()
    with pytest.raises(ValueError, match="no tokenizer for model 'other'"):
        plugin(TokenProducer, {"modelName": "other", "udsTokenizerConfig": config})


def test_an_image_part_with_a_non_string_url_is_sent_without_one() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]}
    request = chat_request(body, "m")  # a client's bad part: no TypeError from protobuf
    assert request.messages[0].content_parts[0].image_url.url == ""
