"""llm-d's UDS tokenizer: the tokenizer sidecar (llm-d-kv-cache's `services/uds_tokenizer`, which
renders with vLLM's own code) reached over gRPC on a Unix domain socket.

The wire protocol is the `tokenization.TokenizationService` of llm-d-kv-cache's
`api/tokenizerpb/tokenizer.proto`; the messages used here are built at import time from a
descriptor written out below (same package, names, field numbers and types), so no generated code
or protoc step is needed. llm-d's client calls `InitializeTokenizer` for its model (retried), then
`RenderCompletion` for a completions prompt and `RenderChatCompletion` for a chat request
(messages with text and image parts, tools and tool calls as JSON, chat template kwargs as JSON),
reading `token_ids` and the multimodal `features`; a reply with `success: false` is an error.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from epp.requests.jsontext import dumps

SERVICE = "tokenization.TokenizationService"
DEFAULT_SOCKET = "/tmp/tokenizer/tokenizer-uds.socket"
INIT_RETRY_SECONDS = 1.0  # after a failed InitializeTokenizer, how long requests fall back

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "uint32": _F.TYPE_UINT32,
}

# message -> [(field, number, type or .Message, label: "" | "repeated" | "optional")]
_MESSAGES: dict[str, list[tuple[str, int, str, str]]] = {
    "InitializeTokenizerRequest": [
        ("model_name", 1, "string", ""),
        ("enable_thinking", 2, "bool", ""),
        ("add_generation_prompt", 3, "bool", ""),
    ],
    "InitializeTokenizerResponse": [("success", 1, "bool", ""), ("error_message", 2, "string", "")],
    "ImageUrl": [("url", 1, "string", "")],
    "ContentPart": [
        ("type", 1, "string", ""),
        ("text", 2, "string", "optional"),
        ("image_url", 3, ".tokenization.ImageUrl", "optional"),
    ],
    "ChatMessage": [
        ("role", 1, "string", ""),
        ("content", 2, "string", "optional"),
        ("content_parts", 3, ".tokenization.ContentPart", "repeated"),
        ("tool_calls_json", 4, "string", "optional"),
    ],
    "PlaceholderRange": [("offset", 1, "int32", ""), ("length", 2, "int32", "")],
    "StringList": [("values", 1, "string", "repeated")],
    "PlaceholderRangeList": [("ranges", 1, ".tokenization.PlaceholderRange", "repeated")],
    "RenderChatCompletionRequest": [
        ("model_name", 1, "string", ""),
        ("messages", 2, ".tokenization.ChatMessage", "repeated"),
        ("tools_json", 3, "string", "optional"),
        ("chat_template", 4, "string", ""),
        ("add_generation_prompt", 5, "bool", "optional"),
        ("continue_final_message", 6, "bool", ""),
        ("chat_template_kwargs", 7, "string", "optional"),
    ],
    "RenderChatCompletionResponse": [
        ("request_id", 1, "string", ""),
        ("token_ids", 2, "uint32", "repeated"),
        ("features", 3, ".tokenization.MultiModalFeatures", ""),
        ("success", 4, "bool", ""),
        ("error_message", 5, "string", ""),
    ],
    "RenderCompletionRequest": [("model_name", 1, "string", ""), ("prompt", 2, "string", "")],
    "RenderCompletionResponse": [
        ("request_id", 1, "string", ""),
        ("token_ids", 2, "uint32", "repeated"),
        ("success", 3, "bool", ""),
        ("error_message", 4, "string", ""),
    ],
}
# proto3 maps: message -> [(field, number, value message)], keys are strings
_MAPS = {
    "MultiModalFeatures": [
        ("mm_hashes", 1, "StringList"),
        ("mm_placeholders", 2, "PlaceholderRangeList"),
    ],
}


def _field(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: str, label: str) -> None:
    field = message.field.add(name=name, number=number)
    field.label = _F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL
    if kind.startswith("."):
        field.type = _F.TYPE_MESSAGE
        field.type_name = kind
    else:
        field.type = _TYPES[kind]
    if label == "optional":  # proto3 `optional`: explicit presence through a synthetic oneof
        field.proto3_optional = True
        field.oneof_index = len(message.oneof_decl)
        message.oneof_decl.add(name=f"_{name}")


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="epp/tokenization.proto", package="tokenization", syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field in fields:
            _field(message, *field)
    for name, maps in _MAPS.items():
        message = proto.message_type.add(name=name)
        for field_name, number, value in maps:
            entry_name = "".join(part.title() for part in field_name.split("_")) + "Entry"
            entry = message.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            _field(entry, "key", 1, "string", "")
            _field(entry, "value", 2, f".tokenization.{value}", "")
            _field(message, field_name, number, f".tokenization.{name}.{entry_name}", "repeated")
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
MESSAGES: dict[str, type[Message]] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"tokenization.{name}"))
    for name in (*_MESSAGES, *_MAPS)
}


class UdsTokenizerError(Exception):
    """The sidecar failed; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def chat_request(body: dict[str, Any], model: str) -> Message:
    """An OpenAI chat body as llm-d's client sends it (text and image parts; other parts dropped)."""
    request = MESSAGES["RenderChatCompletionRequest"](model_name=model)
    for raw in body.get("messages") or []:
        if not isinstance(raw, dict):
            continue
        message = request.messages.add(role=str(raw.get("role", "")))
        if raw.get("tool_calls"):
            message.tool_calls_json = dumps(raw["tool_calls"]).decode()
        content = raw.get("content")
        if isinstance(content, list) and content:
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    message.content_parts.add(type="text", text=str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    image = part.get("image_url")
                    url = image.get("url", "") if isinstance(image, dict) else image
                    url = url if isinstance(url, str) else ""  # a client's non-string url: no image
                    message.content_parts.add(type="image_url", image_url={"url": url})
        else:
            message.content = content if isinstance(content, str) else ""
    if body.get("tools"):
        request.tools_json = dumps(body["tools"]).decode()
    if isinstance(body.get("chat_template"), str):
        request.chat_template = body["chat_template"]
    request.add_generation_prompt = body.get("add_generation_prompt", True) is not False
    request.continue_final_message = body.get("continue_final_message") is True
    if isinstance(body.get("chat_template_kwargs"), dict) and body["chat_template_kwargs"]:
        request.chat_template_kwargs = dumps(body["chat_template_kwargs"]).decode()
    return request


def features_dict(message: Message) -> dict[str, Any]:
    """A reply's `features` in the render API's JSON shape (`mm_hashes`, `mm_placeholders`)."""
    features: Any = getattr(message, "features", None)
    if features is None:
        return {}
    return {
        "mm_hashes": {k: list(v.values) for k, v in features.mm_hashes.items()},
        "mm_placeholders": {
            k: [{"offset": r.offset, "length": r.length} for r in v.ranges]
            for k, v in features.mm_placeholders.items()
        },
    }


class UdsTokenizerClient:
    """One gRPC channel to the sidecar (`unix:` socket, or `host:port` with `use_tcp` for tests)."""

    def __init__(self, socket_file: str, model: str, use_tcp: bool = False) -> None:
        self.target = (socket_file or DEFAULT_SOCKET) if use_tcp else f"unix:{socket_file or DEFAULT_SOCKET}"
        self.model = model
        self._channel: grpc.aio.Channel | None = None
        self._initialized = False
        self._retry_at = 0.0

    def _call(self, method: str, response: str) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[
                    ("grpc.max_send_message_length", 100 << 20),
                    ("grpc.max_receive_message_length", 100 << 20),
                ],
            )
        return self._channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=MESSAGES[response].FromString,
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _invoke(self, method: str, response: str, request: Message, timeout: float) -> Any:
        try:
            reply = await self._call(method, response)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            reason = "timeout" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "connection"
            raise UdsTokenizerError(reason, f"{method}: {exc.code().name} {exc.details() or ''}") from None
        if not reply.success:
            raise UdsTokenizerError("rejected", f"{method}: {reply.error_message}")
        return reply

    async def initialize(self, timeout: float) -> None:
        """InitializeTokenizer once; after a failure, requests fall back for INIT_RETRY_SECONDS."""
        if self._initialized:
            return
        now = time.monotonic()
        if now < self._retry_at:
            raise UdsTokenizerError("uninitialized", f"{self.target}: the last InitializeTokenizer failed")
        request = MESSAGES["InitializeTokenizerRequest"](model_name=self.model, add_generation_prompt=True)
        try:
            await self._invoke("InitializeTokenizer", "InitializeTokenizerResponse", request, timeout)
        except UdsTokenizerError:
            self._retry_at = now + INIT_RETRY_SECONDS
            raise
        self._initialized = True

    async def render(
        self, body: dict[str, Any], chat: bool, timeout: float
    ) -> tuple[list[int], dict[str, Any]]:
        """(token ids, features in the render API's shape) of a chat or completions body."""
        await self.initialize(timeout)
        if chat:
            reply = await self._invoke(
                "RenderChatCompletion",
                "RenderChatCompletionResponse",
                chat_request(body, self.model),
                timeout,
            )
            return list(reply.token_ids), features_dict(reply)
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise UdsTokenizerError("bad_request", "the completions prompt is not text")
        request = MESSAGES["RenderCompletionRequest"](model_name=self.model, prompt=prompt)
        reply = await self._invoke("RenderCompletion", "RenderCompletionResponse", request, timeout)
        return list(reply.token_ids), {}
