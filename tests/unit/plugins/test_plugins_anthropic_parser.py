"""`anthropic-parser`: the Messages API request and its usage format, next to openai-parser as in
llm-d router's parsers README."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.plugins.anthropic_parser import AnthropicParser, AnthropicUsageReader
from epp.requests import RequestError, Usage
from tests.unit.plugin_helpers import plugin

CONFIG = (
    Path(__file__).parents[2]
    / "data"
    / "upstream"
    / "configs"
    / ("llmd-router-ebab687__pkg__epp__framework__plugins__requesthandling__parsers__README.md__3.yaml")
)
MESSAGES = {
    "model": "claude-ish",
    "max_tokens": 256,
    "stream": True,
    "system": "be brief",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
}


def test_messages_request() -> None:
    parser = plugin(AnthropicParser)
    request = parser.parse(orjson.dumps(MESSAGES), "/v1/messages?beta=true", {}, "r1")
    assert (request.model, request.stream, request.max_tokens) == ("claude-ish", True, 256)
    assert orjson.loads(request.prompt) == [{"system": "be brief"}, {"messages": MESSAGES["messages"]}]
    assert request.prompt_tokens > 0
    other_system = parser.parse(orjson.dumps({**MESSAGES, "system": "be verbose"}), "/v1/messages", {}, "r2")
    assert other_system.prompt != request.prompt  # the system prompt is part of the hashed prefix


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (
            {"model": "m", "messages": []},
            "/v1/messages",
            "invalid messages request: must have at least one message",
        ),
        ({"model": "m"}, "/v1/messages", "invalid messages request: must have at least one message"),
        (MESSAGES, "/v1/complete", "unsupported API endpoint: /v1/complete"),
    ],
)
def test_refused_requests(body: dict, path: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        plugin(AnthropicParser).parse(orjson.dumps(body), path, {}, "r")
    assert caught.value.code.status == 400


def test_count_tokens_is_not_read() -> None:
    request = plugin(AnthropicParser).parse(b"not json", "/v1/messages/count_tokens", {}, "r")
    assert request.model == "" and request.prompt == b""


def test_usage_json_and_stream() -> None:
    reader = AnthropicUsageReader(streaming=False)
    body = {"usage": {"input_tokens": 12, "output_tokens": 4, "cache_read_input_tokens": 8}}
    reader.feed(orjson.dumps(body), end_of_stream=True)
    assert reader.usage == Usage(prompt_tokens=12, completion_tokens=4, cached_tokens=8, total_tokens=16)
    stream = AnthropicUsageReader(streaming=True)
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 30, "cache_read_input_tokens": 20}},
    }
    delta = {"type": "message_delta", "usage": {"output_tokens": 7}}
    events = [
        b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n",
        b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\nevent: message_delta\nda',
        b"ta: " + orjson.dumps(delta) + b"\n\n",
    ]
    for i, chunk in enumerate(events):
        stream.feed(chunk, end_of_stream=i == len(events) - 1)
    assert stream.usage == Usage(prompt_tokens=30, completion_tokens=7, cached_tokens=20, total_tokens=37)


def test_the_parsers_readme_config_routes_each_api_to_its_parser() -> None:
    store = Datastore()
    store.upsert(
        EndpointSpec(name="a", address="10.0.0.1", port=8000, models=frozenset({"claude-ish", "gpt-ish"}))
    )
    store.synced = True
    context = PluginContext()
    director, _ = build_director(load_config_file(CONFIG), store, context)
    messages = director.handle_body(orjson.dumps(MESSAGES), {":path": "/v1/messages"}, None)
    assert messages.request.model == "claude-ish"
    messages.response_started(200, True)
    usage = {"type": "message_delta", "usage": {"output_tokens": 3}}
    messages.response_body(b"data: " + orjson.dumps(usage) + b"\n\n", end_of_stream=True)
    labels = {"model_name": "claude-ish", "target_model_name": "claude-ish"}
    sample = context.metrics.registry.get_sample_value("inference_objective_output_tokens_sum", labels)
    assert sample == 3.0  # read in Anthropic's format
    chat = {"model": "gpt-ish", "messages": [{"role": "user", "content": "hi"}]}
    assert (
        director.handle_body(orjson.dumps(chat), {":path": "/v1/chat/completions"}, None).request.model
        == "gpt-ish"
    )
    with pytest.raises(RequestError, match="must have at least one message"):
        director.handle_body(orjson.dumps({"model": "claude-ish"}), {":path": "/v1/messages"}, None)
