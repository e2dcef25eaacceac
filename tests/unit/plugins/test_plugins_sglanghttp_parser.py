"""`sglanghttp-parser`: SGLang's token-in /generate and its meta_info usage."""

from __future__ import annotations

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.plugins.sglanghttp_parser import SGLangHTTPParser, SGLangUsageReader
from epp.requests import RequestError, Usage
from tests.unit.plugin_helpers import plugin

GENERATE = {
    "input_ids": [1, 2, 3],
    "extra_key": "tenant-a",
    "sampling_params": {"max_new_tokens": 8},
    "stream": True,
}


def test_generate_request() -> None:
    request = plugin(SGLangHTTPParser).parse(orjson.dumps(GENERATE), "/generate", {}, "r")
    assert (request.token_ids, request.cache_salt, request.max_tokens, request.stream) == (
        [1, 2, 3],
        "tenant-a",
        8,
        True,
    )
    assert request.model == "" and request.prompt_tokens == 3


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (GENERATE, "/v1/generate", "unsupported path: /v1/generate"),
        ({"text": "hi"}, "/generate", "input_ids must be provided"),
        ({"input_ids": []}, "/generate", "input_ids cannot be empty"),
        ({"input_ids": [-1]}, "/generate", "input_ids must be an array of uint32 integers"),
        ({"input_ids": [1], "extra_key": 3}, "/generate", "extra_key must be a string"),
    ],
)
def test_refused(body: dict, path: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        plugin(SGLangHTTPParser).parse(orjson.dumps(body), path, {}, "r")


def test_meta_info_usage() -> None:
    reader = SGLangUsageReader(streaming=False)
    meta = {"prompt_tokens": 6, "completion_tokens": 2, "cached_tokens": 4, "finish_reason": {"type": "stop"}}
    reader.feed(orjson.dumps({"text": "x", "meta_info": meta}), end_of_stream=True)
    assert reader.usage == Usage(6, 2, 4, 8)
    stream = SGLangUsageReader(streaming=True)
    partial = {"text": "a", "meta_info": {"prompt_tokens": 6, "completion_tokens": 1, "finish_reason": None}}
    stream.feed(b"data: " + orjson.dumps(partial) + b"\n\n", end_of_stream=False)
    assert stream.usage is None  # only the finished event counts
    stream.feed(b"data: " + orjson.dumps({"meta_info": meta}) + b"\n\ndata: [DONE]\n\n", end_of_stream=True)
    assert stream.usage == Usage(6, 2, 4, 8)


def test_routed_beside_openai() -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: openai-parser\n- type: sglanghttp-parser\n- type: queue-scorer\n"
        "requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: sglanghttp-parser}]}\n"
    )
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=30000))
    store.synced = True
    director, _ = build_director(load_config(text), store, PluginContext())
    routed = director.handle_body(orjson.dumps(GENERATE), {":path": "/generate"}, None)
    assert routed.request.token_ids == [1, 2, 3] and routed.destination == "10.0.0.1:30000"
