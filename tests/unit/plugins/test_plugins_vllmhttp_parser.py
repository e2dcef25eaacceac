"""`vllmhttp-parser`: vLLM's token-in generate API, beside openai-parser (llm-d router's README)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.plugins.vllmhttp_parser import VllmHTTPParser
from epp.requests import RequestError
from tests.unit.plugin_helpers import plugin

CONFIG = (
    Path(__file__).parents[2]
    / "data"
    / "upstream"
    / "configs"
    / ("llmd-router-ebab687__pkg__epp__framework__plugins__requesthandling__parsers__README.md__2.yaml")
)
GENERATE = {"model": "m", "token_ids": [1, 2, 3, 4], "sampling_params": {"max_tokens": 9}, "stream": True}


def test_generate_request() -> None:
    request = plugin(VllmHTTPParser).parse(orjson.dumps(GENERATE), "/inference/v1/generate", {}, "r")
    assert (request.model, request.token_ids, request.max_tokens, request.stream) == (
        "m",
        [1, 2, 3, 4],
        9,
        True,
    )
    assert request.prompt_tokens == 4


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({"model": "m", "token_ids": []}, "/inference/v1/generate", "must have non-empty token_ids field"),
        ({"model": "m", "prompt": "hi"}, "/inference/v1/generate", "must have non-empty token_ids field"),
        ({"token_ids": ["a"]}, "/inference/v1/generate", "must have non-empty token_ids field"),
        (GENERATE, "/v1/completions", "unsupported path: /v1/completions"),
    ],
)
def test_refused(body: dict, path: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        plugin(VllmHTTPParser).parse(orjson.dumps(body), path, {}, "r")


def test_readme_config_sends_generate_and_openai_paths_to_their_parsers() -> None:
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=8000))
    store.synced = True
    director, _ = build_director(load_config_file(CONFIG), store, PluginContext())
    generate = director.handle_body(orjson.dumps(GENERATE), {":path": "/inference/v1/generate"}, None)
    assert generate.request.token_ids == [1, 2, 3, 4]
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert director.handle_body(orjson.dumps(chat), {":path": "/v1/chat/completions"}, None).request.prompt
    with pytest.raises(RequestError, match="token_ids"):
        director.handle_body(orjson.dumps({"model": "m"}), {":path": "/inference/v1/generate"}, None)
