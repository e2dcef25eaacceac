"""Simulated vLLM servers over real HTTP on 127.0.0.1 (free ports, tiny profile)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gzip
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import msgpack
import openai
import pytest
import zmq
import zmq.asyncio
from aiohttp import web

from epp.sim.cluster import SimCluster, make_configs
from epp.sim.config import LoraModule
from epp.sim.pd import RELEASE_PATH
from epp.sim.profiles import TINY_TEST
from epp.sim.tokens import tokenize
from epp.stack.processes import free_port
from tests.integration.helpers import read_sse

MODEL = "sim-model"
GENERATION_FAILED = {
    "object": "error",
    "message": "Internal server error",
    "type": "InternalServerError",
    "param": None,
    "code": 500,
}
"""vLLM's answer to a request its engine ended with an error (a failed KV load, policy `fail`)."""
POLL_INTERVAL = 0.01
POLL_LIMIT = 1000


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    configs = make_configs(
        2,
        profile=TINY_TEST,
        model=MODEL,
        lora_modules=(LoraModule("alpha", "/adapters/alpha"), LoraModule("beta")),
    )
    async with SimCluster(configs) as sims:
        yield sims


def base(sims: SimCluster, index: int = 0) -> str:
    return sims.endpoints[index].url


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(url, json=body, **kw) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/internal/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def poll(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(POLL_LIMIT):
        if await check():
            return
        await asyncio.sleep(POLL_INTERVAL)
    raise AssertionError("condition not reached")


async def metric_values(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_a_header_past_aiohttps_default_limit_is_read(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """A 20 KB header (a long bearer token) is what Envoy forwards and vLLM reads: it got a
    plain-text 400 'Got more than 8190 bytes when reading'."""
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    token = "Bearer " + "t" * 20_000
    status, _, data = await post(
        http, base(cluster) + "/v1/completions", body, headers={"authorization": token}
    )
    assert status == 200, data


async def test_completion_non_stream(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    endpoint = cluster.endpoints[1]
    prompt = "The capital of France is"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 7, "ignore_eos": True}
    status, headers, data = await post(http, endpoint.url + "/v1/completions", body)
    assert status == 200
    assert headers["x-inference-pod"] == endpoint.name == "sim-1"
    assert headers["x-inference-port"] == str(endpoint.port)
    assert headers["x-inference-host"] == "127.0.0.1"
    assert data["object"] == "text_completion" and data["model"] == MODEL
    assert data["id"].startswith("cmpl-")
    (choice,) = data["choices"]
    assert choice["finish_reason"] == "length" and len(choice["text"].split()) == 7
    assert data["usage"]["completion_tokens"] == 7
    assert data["usage"]["prompt_tokens"] == len(tokenize(prompt))
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 7


async def test_batch_prompts_and_token_ids(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = base(cluster) + "/v1/completions"
    status, _, data = await post(http, url, {"model": MODEL, "prompt": ["one two", "three"], "max_tokens": 2})
    assert status == 200 and [c["index"] for c in data["choices"]] == [0, 1]
    status, _, data = await post(http, url, {"model": MODEL, "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 1})
    assert status == 200 and data["usage"]["prompt_tokens"] == 5
    status, _, data = await post(http, url, {"model": MODEL, "prompt": [7, 8, 9, 10], "max_tokens": 3})
    assert status == 200 and data["usage"]["prompt_tokens"] == 4


async def test_an_empty_prompt_gets_vllms_400(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = base(cluster) + "/v1/completions"
    for prompt, message, param in [
        ("", "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"),
        ([], "please provide at least one prompt", None),
    ]:
        status, _, data = await post(http, url, {"model": MODEL, "prompt": prompt})
        assert (status, data["message"], data["param"]) == (400, message, param)
        assert data["type"] == "BadRequestError"


async def test_n_samples_each_prompt_n_times(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = base(cluster) + "/v1/completions"
    body = {"model": MODEL, "prompt": ["one two", "three"], "max_tokens": 8, "ignore_eos": True, "n": 2}
    status, _, data = await post(http, url, body)
    assert status == 200 and [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert data["choices"][0]["text"] != data["choices"][1]["text"], "samples of one prompt differ"
    single = await post(http, url, {**body, "n": 1})
    assert data["usage"]["prompt_tokens"] == single[2]["usage"]["prompt_tokens"], "a prompt counts once"
    assert data["usage"]["completion_tokens"] == 4 * 8
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 3}
    async with http.post(base(cluster) + "/v1/chat/completions", json={**chat, "stream": True}) as response:
        frames = await read_sse(response)
    assert {f["choices"][0]["index"] for f in frames[:-1]} == {0, 1, 2}
    # vLLM's lax integers: `true` is 1 and "2" is 2; a completions `n` may not be null.
    for bad in ("two", 1.5, None):
        status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "n": bad})
        assert (status, data["param"], data["message"]) == (400, "n", "'n' must be an integer")
    for bad in (0, -1):
        status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "n": bad})
        assert (status, data["param"], data["message"]) == (400, None, f"n must be at least 1, got {bad}.")
    for lax, choices in ((True, 1), ("2", 2)):
        status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "n": lax, "max_tokens": 1})
        assert status == 200 and len(data["choices"]) == choices


async def test_sampling_parameters_vllm_refuses_are_its_400(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """A negative temperature, a top_p of 0 and a prompt token id past the vocabulary were
    answered 200; vLLM answers each with a 400 in its error shape (vllm/sampling_params.py)."""
    completions, chat = base(cluster) + "/v1/completions", base(cluster) + "/v1/chat/completions"
    messages = [{"role": "user", "content": "hi"}]
    cases: list[tuple[str, dict[str, Any], str | None, str]] = [
        (chat, {"messages": messages, "temperature": -1}, "temperature",
         "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)"),
        (completions, {"prompt": "x", "top_p": 0}, "top_p",
         "top_p must be in (0, 1], got 0.0. (parameter=top_p, value=0.0)"),
        (completions, {"prompt": [1, 999_999_999]}, None, "Token id 999999999 is out of vocabulary"),
        (chat, {"messages": messages, "stop_token_ids": [128_256]}, "stop_token_ids",
         "token_id(s) [128256] in stop_token_ids contain out-of-vocab token ids. Vocabulary size: 128256 "
         "(parameter=stop_token_ids, value=[128256])"),
        (base(cluster) + "/v1/responses", {"input": "x", "temperature": "nan"}, "temperature",
         "temperature must be a finite number, got nan. (parameter=temperature, value=nan)"),
    ]  # fmt: skip
    for url, fields, param, message in cases:
        status, _, data = await post(http, url, {"model": MODEL, **fields})
        assert status == 400
        assert data == {
            "object": "error",
            "message": message,
            "type": "BadRequestError",
            "param": param,
            "code": 400,
        }
    # chat without max_tokens: vLLM fills in what the context leaves, and checks min_tokens against it
    status, _, data = await post(http, chat, {"model": MODEL, "messages": messages, "max_tokens": 1})
    left = TINY_TEST.max_model_len - data["usage"]["prompt_tokens"]
    status, _, data = await post(http, chat, {"model": MODEL, "messages": messages, "min_tokens": left + 1})
    expected = f"min_tokens must be less than or equal to max_tokens={left}, got {left + 1}."
    assert (status, data["param"], data["message"]) == (400, None, expected)
    status, _, data = await post(http, chat, {"model": MODEL, "messages": messages, "min_tokens": left})
    assert status == 200


async def test_n_beyond_the_limit_is_a_400_before_any_sequence_is_built(http: aiohttp.ClientSession) -> None:
    """n = 10**9 once grew a simulator to 10 GB: the bound is checked before anything is built."""
    configs = make_configs(1, profile=TINY_TEST.with_overrides(max_waiting=5000), model=MODEL)
    async with SimCluster(configs) as sims:
        url = base(sims) + "/v1/completions"
        for n in (16_385, 10**9):
            status, _, data = await asyncio.wait_for(
                post(http, url, {"model": MODEL, "prompt": "x", "n": n}), 5
            )
            assert (status, data["param"]) == (400, "n")
            assert data["message"].startswith(f"n must be at most 16384, got {n}.")
            assert "--max-n-sequences" in data["message"]
        assert (await stats(http, base(sims)))["requests"] == 0
        ok = await post(http, url, {"model": MODEL, "prompt": "x", "n": 3, "max_tokens": 1})
        assert ok[0] == 200 and len(ok[2]["choices"]) == 3
    async with SimCluster(make_configs(1, profile=TINY_TEST, model=MODEL, max_n_sequences=4)) as sims:
        status, _, data = await post(
            http, base(sims) + "/v1/completions", {"model": MODEL, "prompt": "x", "n": 5}
        )
        assert status == 400 and data["message"].startswith("n must be at most 4, got 5.")


async def test_priority_field_needs_the_priority_scheduling_policy(
    http: aiohttp.ClientSession, cluster: SimCluster
) -> None:
    """As vLLM: a non-zero `priority` on an FCFS server is a 400; 0 (the default) is accepted;
    with --scheduling-policy priority the field reaches the engine's request."""
    url = base(cluster) + "/v1/completions"
    status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "max_tokens": 1, "priority": -1})
    assert (status, data["param"], data["message"]) == (
        400,
        "priority",
        "Got priority -1 but Priority scheduling is not enabled.",
    )
    status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "priority": "high"})
    assert (status, data["param"], data["message"]) == (400, "priority", "'priority' must be an integer")
    assert (await post(http, url, {"model": MODEL, "prompt": "x", "max_tokens": 1, "priority": 0}))[0] == 200
    configs = make_configs(1, profile=TINY_TEST, model=MODEL, scheduling_policy="priority")
    async with SimCluster(configs) as sims:
        server = sims.servers[0]
        added: list[int] = []
        submit = server.driver.submit

        def recording(request: Any, wake: Any) -> Any:
            added.append(request.priority)
            return submit(request, wake)

        server.driver.submit = recording  # type: ignore[method-assign]
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1, "priority": -1}
        assert (await post(http, base(sims) + "/v1/completions", body))[0] == 200
        assert added == [-1]


@pytest.mark.parametrize(
    ("path", "body", "param", "count"),
    [
        ("/v1/completions", {"prompt": "x", "n": 65}, "n", "65 sequences (1 prompt x n=65)"),
        ("/v1/completions", {"prompt": ["a", "b"], "n": 40}, "n", "80 sequences (2 prompts x n=40)"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "n": 100},
            "n",
            "100 sequences",
        ),
        ("/v1/completions", {"prompt": ["p"] * 65}, "prompt", "65 sequences (65 prompts x n=1)"),
        ("/v1/embeddings", {"input": ["p"] * 65}, "input", "65 inputs"),
    ],
)
async def test_a_request_larger_than_the_waiting_queue_is_a_400_not_a_429(
    cluster: SimCluster, http: aiohttp.ClientSession, path: str, body: dict[str, Any], param: str, count: str
) -> None:
    """Its sequences enter the waiting queue at once (64 in the tiny profile): it could never be
    admitted, so retrying after a 429 would never help."""
    status, _, data = await post(http, base(cluster) + path, {"model": MODEL, **body})
    assert (status, data["param"]) == (400, param), data
    assert count in data["message"] and "at most 64 (--max-waiting)" in data["message"]
    assert (await stats(http, base(cluster)))["requests"] == 0


async def test_output_length_is_deterministic_without_ignore_eos(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    url = base(cluster) + "/v1/completions"
    body = {"model": MODEL, "prompt": "deterministic please", "max_tokens": 600}
    first = (await post(http, url, body))[2]
    second = (await post(http, url, body))[2]
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["choices"][0]["finish_reason"] == "stop"
    assert 1 <= first["usage"]["completion_tokens"] <= 512


async def test_chat_with_content_parts_and_cached_tokens(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    url = base(cluster) + "/v1/chat/completions"
    system = {"role": "system", "content": "You are a helpful assistant. " * 20}
    for question, expect_cached in (("What is a cache?", False), ("What is a queue?", True)):
        body = {
            "model": MODEL,
            "messages": [system, {"role": "user", "content": [{"type": "text", "text": question}]}],
            "max_completion_tokens": 3,
        }
        status, _, data = await post(http, url, body)
        assert status == 200 and data["object"] == "chat.completion"
        assert data["choices"][0]["message"]["role"] == "assistant"
        assert data["choices"][0]["message"]["content"]
        cached = data["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert (cached > 0) is expect_cached
        assert cached % TINY_TEST.block_size == 0


async def test_cache_salt_isolates_cached_prompts_and_is_echoed_by_render(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """vLLM's `cache_salt`: differently salted prompts share no cached block, the same salt
    shares them; its render API echoes the salt; an empty or non-string salt is its 400."""
    url = base(cluster) + "/v1/completions"
    prompt = "The same long shared document. " * 20
    cached = []
    for salt in ("tenant-a", "tenant-b", "tenant-a"):
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "cache_salt": salt}
        status, _, data = await post(http, url, body)
        assert status == 200
        cached.append(data["usage"]["prompt_tokens_details"]["cached_tokens"])
        prompt_tokens = data["usage"]["prompt_tokens"]
    assert cached == [0, 0, (prompt_tokens - 1) // TINY_TEST.block_size * TINY_TEST.block_size]
    assert cached[2] > 0
    render = {"model": MODEL, "prompt": prompt, "cache_salt": "t"}
    status, _, rendered = await post(http, url + "/render", render)
    assert status == 200 and rendered[0]["cache_salt"] == "t"
    for bad in ("", 7):
        status, _, error = await post(http, url, {"model": MODEL, "prompt": prompt, "cache_salt": bad})
        assert (status, error["param"]) == (400, "cache_salt")
        assert error["message"] == "Parameter 'cache_salt' must be a non-empty string if provided."


async def test_stream_with_usage(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    body = {
        "model": MODEL,
        "prompt": "stream me",
        "max_tokens": 6,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(base(cluster) + "/v1/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["x-inference-pod"] == "sim-0"
        frames = await read_sse(response)
    assert frames[-1] == "[DONE]"
    usage_frame = frames[-2]
    assert usage_frame["choices"] == [] and usage_frame["usage"]["completion_tokens"] == 6
    tokens = frames[:-2]
    assert len(tokens) == 6
    assert [f["choices"][0]["finish_reason"] for f in tokens] == [None] * 5 + ["length"]


@pytest.mark.parametrize("kind", ["completions", "chat"])
async def test_continuous_usage_stats_put_the_running_usage_on_every_frame(
    cluster: SimCluster, http: aiohttp.ClientSession, kind: str
) -> None:
    """vLLM's `stream_options.continuous_usage_stats` (with `include_usage`): every frame carries
    the choice's usage so far (chat's role frames 0 completion tokens), then the usual usage frame.
    The simulator ignored it: only the last frame had usage."""
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 3,
        "ignore_eos": True,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": "true"},
    }
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": "stream me"}]
    else:
        body["prompt"] = "stream me"
    async with http.post(
        f"{base(cluster)}/v1/{kind.replace('chat', 'chat/completions')}", json=body
    ) as response:
        frames = await read_sse(response)
    assert frames[-1] == "[DONE]"
    final = frames[-2]
    prompt = final["usage"]["prompt_tokens"]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 6
    running: dict[int, list[int]] = {0: [], 1: []}
    for frame in frames[:-2]:
        (choice,) = frame["choices"]
        usage = frame["usage"]
        assert usage == {
            "prompt_tokens": prompt,
            "total_tokens": prompt + usage["completion_tokens"],
            "completion_tokens": usage["completion_tokens"],
        }
        running[choice["index"]].append(usage["completion_tokens"])
    expected = [0, 1, 2, 3] if kind == "chat" else [1, 2, 3]  # chat opens each choice with its role
    assert running == {0: expected, 1: expected}
    plain = {**body, "stream_options": {"include_usage": True}}
    async with http.post(
        f"{base(cluster)}/v1/{kind.replace('chat', 'chat/completions')}", json=plain
    ) as response:
        assert all("usage" not in frame for frame in (await read_sse(response))[:-2])


async def test_stream_given_as_a_string_streams(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    """vLLM reads `"stream": "true"` as true (pydantic's lax booleans); the simulator answered it
    with one JSON body."""
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "ignore_eos": "true", "stream": "true"}
    body["stream_options"] = {"include_usage": "1"}
    async with http.post(base(cluster) + "/v1/completions", json=body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        frames = await read_sse(response)
    assert frames[-1] == "[DONE]" and frames[-2]["usage"]["completion_tokens"] == 2
    status, _, error = await post(http, base(cluster) + "/v1/completions", {**body, "stream": 2})
    assert (status, error["param"], error["message"]) == (400, "stream", "'stream' must be a boolean")


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
        "hours": {"type": "array", "items": {"type": "integer"}},
        "alerts": {"type": "boolean"},
    },
    "required": ["city", "unit", "days", "where", "hours", "alerts"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def tool_request(choice: Any, **fields: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    return {"model": MODEL, "messages": messages, "tools": TOOLS, "tool_choice": choice, **fields}


async def test_a_named_tool_choice_answers_one_call_to_that_tool(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """vLLM with a named tool_choice: guided decoding writes the tool's arguments, the message has
    no content and one call; finish_reason stays "stop" (OpenAI's rule for a named call). The
    simulator answered with words and no call."""
    status, _, data = await post(http, base(cluster) + "/v1/chat/completions", tool_request(NAMED))
    assert status == 200
    (choice,) = data["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == ""
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
    assert call["function"]["name"] == "get_weather"
    arguments = call["function"]["arguments"]
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    assert data["usage"]["completion_tokens"] == len(tokenize(arguments))


async def test_a_required_tool_choice_streams_one_call(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """Streamed as vLLM streams it: the call's id, type and name with its first arguments, then
    argument deltas; the tokens of the `[{"name": ..., "parameters": ...}]` around them send no
    frame but count in the usage; finish_reason "tool_calls"."""
    body = tool_request("required", stream=True, stream_options={"include_usage": True})
    async with http.post(base(cluster) + "/v1/chat/completions", json=body) as response:
        frames = await read_sse(response)
    assert frames[-1] == "[DONE]" and frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [f["choices"][0]["delta"] for f in frames[1:-2]]
    first = deltas[0]["tool_calls"][0]
    assert first["id"].startswith("chatcmpl-tool-") and first["type"] == "function" and first["index"] == 0
    name = first["function"]["name"]
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d)
    jsonschema.validate(json.loads(arguments), tools[name])
    assert all(set(d["tool_calls"][0]) == {"index", "function"} for d in deltas[1:] if d)
    assert [f["choices"][0]["finish_reason"] for f in frames[1:-2]][-1] == "tool_calls"
    written = f'[{{"name": "{name}", "parameters": {arguments}}}]'
    assert frames[-2]["usage"]["completion_tokens"] == len(tokenize(written))

    status, _, data = await post(http, base(cluster) + "/v1/chat/completions", tool_request("required"))
    (choice,) = data["choices"]
    assert (status, choice["finish_reason"], choice["message"]["content"]) == (200, "tool_calls", "")
    assert choice["message"]["tool_calls"][0]["function"] == {"name": name, "arguments": arguments}


async def test_a_named_tool_call_streamed_and_cut_short(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    body = tool_request(NAMED, stream=True, logprobs=True)
    async with http.post(base(cluster) + "/v1/chat/completions", json=body) as response:
        frames = await read_sse(response)
    choices = [f["choices"][0] for f in frames[1:-1]]
    arguments = "".join(c["delta"]["tool_calls"][0]["function"]["arguments"] for c in choices)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    assert choices[-1]["finish_reason"] == "stop"
    assert "".join(c["logprobs"]["content"][0]["token"] for c in choices) == arguments

    status, _, data = await post(
        http, base(cluster) + "/v1/chat/completions", tool_request(NAMED, max_tokens=3)
    )
    (choice,) = data["choices"]
    assert (status, choice["finish_reason"], data["usage"]["completion_tokens"]) == (200, "length", 3)
    cut = choice["message"]["tool_calls"][0]["function"]["arguments"]
    assert arguments.startswith(cut) and len(tokenize(cut)) == 3


async def test_a_required_tool_call_cut_short_answers_no_call(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """vLLM parses a required call's list and answers no call when it was cut: the simulator
    answered the cut arguments as a call."""
    body = tool_request("required", tools=TOOLS[:1], max_tokens=30)  # past the call's name, before its end
    status, _, data = await post(http, base(cluster) + "/v1/chat/completions", body)
    (answer,) = data["choices"]
    assert (status, answer["finish_reason"], data["usage"]["completion_tokens"]) == (200, "length", 30)
    assert (answer["message"]["content"], answer["message"]["tool_calls"]) == ("", [])


async def test_a_tool_whose_arguments_cannot_end_is_cut_at_max_tokens(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """`minItems: 10**9`: guided decoding writes items until `max_tokens`, as the simulator now
    does. It drew all 10**9 first, and the server answered nothing (this request nor any other)."""
    endless = {"type": "object", "properties": {"ids": {"type": "array", "minItems": 10**9}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": endless}}]
    choice = {"type": "function", "function": {"name": "f"}}
    body = tool_request(choice, tools=tools, max_tokens=20)
    status, _, data = await post(http, base(cluster) + "/v1/chat/completions", body)
    (answer,) = data["choices"]
    assert (status, answer["finish_reason"], data["usage"]["completion_tokens"]) == (200, "length", 20)
    arguments = answer["message"]["tool_calls"][0]["function"]["arguments"]
    assert arguments.startswith('{"ids": [') and len(tokenize(arguments)) == 20


async def test_integers_past_64_bits_in_a_request_are_read_as_written(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """orjson read a tool schema's `const` 10**20 as 1e+20, so the arguments said `1e+20`; a client
    field past 64 bits passes, and a seed past them is vLLM's 400 naming the value as sent."""
    parameters = {"type": "object", "properties": {"n": {"const": 10**20}}, "required": ["n"]}
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    choice = {"type": "function", "function": {"name": "f"}}
    body = tool_request(choice, tools=tools, seed=2**63 - 1, client_field={"id": -(2**70)})
    status, _, data = await post(http, base(cluster) + "/v1/chat/completions", body)
    assert status == 200, data
    (answer,) = data["choices"]
    assert answer["message"]["tool_calls"][0]["function"]["arguments"] == '{"n": 100000000000000000000}'
    status, _, data = await post(http, base(cluster) + "/v1/chat/completions", {**body, "seed": 10**20})
    message = "'seed' must be between -2**63 and 2**63 - 1 (a 64-bit integer), got 100000000000000000000"
    assert (status, data["message"], data["param"]) == (400, message, "seed")


async def test_a_tool_schema_no_arguments_satisfy_is_a_400_naming_the_clash(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """A required property `additionalProperties: false` forbids: the simulator drew it as a
    string and answered 200 with arguments the schema refuses."""
    parameters = {"type": "object", "required": ["n"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    body = tool_request({"type": "function", "function": {"name": "f"}}, tools=tools)
    status, _, data = await post(http, base(cluster) + "/v1/chat/completions", body)
    allowed = "which no property or pattern allows (additionalProperties is false)"
    message = f"the tool's parameters require 'n', {allowed}"
    assert (status, data["message"], data["param"]) == (400, message, "tools")


async def test_an_unknown_tool_in_tool_choice_is_vllms_400(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    choice = {"type": "function", "function": {"name": "get_news"}}
    status, _, data = await post(http, base(cluster) + "/v1/chat/completions", tool_request(choice))
    assert (status, data["param"]) == (400, "tool_choice")
    assert (
        data["message"] == "The tool specified in `tool_choice` does not match any of the specified `tools`"
    )


async def test_chat_stream_role_frame_first(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    async with http.post(base(cluster) + "/v1/chat/completions", json=body) as response:
        frames = await read_sse(response)
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(f["object"] == "chat.completion.chunk" for f in frames[:-1])
    assert frames[-1] == "[DONE]" and len(frames) == 1 + 3 + 1


async def test_chat_stream_body_starts_with_the_first_token(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """As vLLM: the role frame is not sent ahead of the prefill but with the first output, so the
    body's first bytes (which an EPP reading the chunks takes as the first token) carry a token."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    async with http.post(base(cluster) + "/v1/chat/completions", json=body) as response:
        first = await response.content.readany()
        await response.read()
    frames = [json.loads(line[6:]) for line in first.split(b"\n\n") if line.startswith(b"data: {")]
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert frames[1]["choices"][0]["delta"]["content"]


async def test_models_and_lora(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    async with http.get(base(cluster) + "/v1/models") as response:
        models = await response.json()
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id[MODEL]["parent"] is None and by_id[MODEL]["max_model_len"] == TINY_TEST.max_model_len
    assert by_id["alpha"]["parent"] == MODEL and by_id["alpha"]["root"] == "/adapters/alpha"
    assert by_id["beta"]["parent"] == MODEL
    status, _, data = await post(
        http, base(cluster) + "/v1/completions", {"model": "alpha", "prompt": "adapter", "max_tokens": 2}
    )
    assert status == 200 and data["model"] == "alpha"


async def test_metrics_present_and_moving(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = base(cluster)
    before = await metric_values(http, url)
    label = f'{{model_name="{MODEL}"}}'
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:time_per_output_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
    ):
        assert name + label in before, name
    assert (
        before[f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="{TINY_TEST.num_gpu_blocks}"}}'] == 1
    )
    lora_info = [k for k in before if k.startswith("vllm:lora_requests_info{")]
    assert lora_info == [
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""}'
    ]
    body = {"model": MODEL, "prompt": "count me " * 10, "max_tokens": 4, "ignore_eos": True}
    await post(http, url + "/v1/completions", body)
    after = await metric_values(http, url)
    assert after["vllm:generation_tokens_total" + label] == before["vllm:generation_tokens_total" + label] + 4
    assert after["vllm:prompt_tokens_total" + label] > before["vllm:prompt_tokens_total" + label]
    assert after[f'vllm:request_success_total{{finished_reason="length",model_name="{MODEL}"}}'] == 1
    assert after["vllm:time_to_first_token_seconds_count" + label] == 1
    assert after["vllm:inter_token_latency_seconds_count" + label] == 3


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/tokenize"])
async def test_a_body_not_sent_as_json_is_vllms_400(
    cluster: SimCluster, http: aiohttp.ClientSession, content_type: str | None, path: str
) -> None:
    """vLLM refuses any media type but application/json (`curl -d` without a content-type header
    sends a form); the simulator served such requests, so a client that worked against `epp run`
    failed against vLLM."""
    body = json.dumps(
        {"model": MODEL, "prompt": "x", "input": "x", "messages": [{"role": "user", "content": "x"}]}
    )
    headers = {} if content_type is None else {"content-type": content_type}
    async with http.post(base(cluster) + path, data=body.encode(), headers=headers) as response:
        data = await response.json(content_type=None)
    assert response.status == 400, data
    assert (data["object"], data["type"], data["code"]) == ("error", "BadRequestError", 400)
    assert data["message"] == "Unsupported Media Type: Only 'application/json' is allowed"
    charset = {"content-type": "Application/JSON; charset=utf-8"}
    async with http.post(base(cluster) + path, data=body.encode(), headers=charset) as response:
        assert response.status == 200, await response.text()


async def test_error_shapes(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = base(cluster) + "/v1/completions"
    async with http.post(url, data=b"{not json", headers={"content-type": "application/json"}) as response:
        data = await response.json()
        assert response.status == 400 and response.headers["x-inference-pod"] == "sim-0"
    assert data["object"] == "error" and data["type"] == "BadRequestError" and data["code"] == 400
    assert "JSON" in data["message"] and data["param"] is None

    status, _, data = await post(http, url, {"model": MODEL})
    assert (status, data["param"]) == (400, "prompt")
    assert data["message"] == "Either prompt or prompt_embeds must be provided and non-empty."
    status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "max_tokens": 0})
    assert (status, data["param"]) == (400, "max_tokens")
    status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "max_tokens": 5000})
    assert status == 400 and "maximum context length is 2048" in data["message"]
    status, _, data = await post(http, url, {"model": "missing", "prompt": "x"})
    assert (status, data["type"], data["message"]) == (
        404,
        "NotFoundError",
        "The model `missing` does not exist.",
    )
    status, _, data = await post(
        http, base(cluster) + "/v1/chat/completions", {"model": MODEL, "messages": []}
    )
    assert (status, data["param"]) == (400, "messages")
    async with http.get(base(cluster) + "/no/such/path") as response:
        assert response.status == 404 and response.headers["x-inference-pod"] == "sim-0"


async def test_content_encoding_is_not_decoded_as_vllm_does_not(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """vLLM's server (uvicorn) ignores a request's Content-Encoding: a plain JSON body labelled gzip
    is served, a compressed one is vLLM's 400 for a body that is not JSON, never a 500."""
    url = base(cluster) + "/v1/completions"
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode()
    labelled = {"content-type": "application/json", "content-encoding": "gzip"}
    async with http.post(url, data=body, headers=labelled) as response:
        assert response.status == 200, await response.text()
    async with http.post(url, data=gzip.compress(body), headers=labelled) as response:
        data = await response.json()
        assert response.status == 400, data
    assert (data["type"], data["code"]) == ("BadRequestError", 400)
    assert data["message"].startswith("request body is not valid JSON")


async def test_fields_it_does_not_simulate_are_refused_not_ignored(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """vLLM answers `echo` with the prompt before the completion, and `prompt_logprobs` with the
    prompt's log probabilities; the simulator has neither (a token-id prompt has no text here), so
    it says so rather than answering without them. Their off values are served."""
    url = base(cluster) + "/v1/completions"
    body = {"model": MODEL, "prompt": "x y", "max_tokens": 1}
    for field, value, off in (("echo", True, "false"), ("prompt_logprobs", 1, "null")):
        status, _, error = await post(http, url, {**body, field: value})
        assert (status, error["param"], error["type"]) == (400, field, "BadRequestError")
        assert error["message"] == f"'{field}' is not simulated: send it as {off}"
    # Off as vLLM's lax booleans read it, or null where its field is optional.
    for field, value in (
        ("echo", False),
        ("echo", "false"),
        ("echo", 0),
        ("echo", None),
        ("prompt_logprobs", None),
    ):
        assert (await post(http, url, {**body, field: value}))[0] == 200, (field, value)


async def test_lax_field_types_are_taken_as_vllm_takes_them(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """vLLM's pydantic models read `"logprobs": 1` as true and `"top_logprobs": 2.0` as 2; a
    boolean it cannot read is a 400."""
    url = base(cluster) + "/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    status, _, data = await post(http, url, {**body, "logprobs": 1, "top_logprobs": 2.0})
    assert status == 200, data
    assert [len(t["top_logprobs"]) for t in data["choices"][0]["logprobs"]["content"]] == [2, 2]
    status, _, data = await post(http, url, {**body, "logprobs": 2})
    assert (status, data["param"], data["message"]) == (400, "logprobs", "'logprobs' must be a boolean")


async def test_x_return_error(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = base(cluster) + "/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    status, headers, data = await post(http, url, body, headers={"X-Return-Error": "503"})
    assert (status, data["code"], data["type"]) == (503, 503, "ServiceUnavailableError")
    assert headers["x-inference-pod"] == "sim-0"
    status, _, data = await post(http, url, body, headers={"X-Return-Error": "banana"})
    assert status == 400 and "X-Return-Error" in data["message"]
    assert (await stats(http, base(cluster)))["requests"] == 0


async def test_queue_full_returns_429() -> None:
    profile = TINY_TEST.with_overrides(max_num_seqs=1, max_waiting=1)
    async with (
        SimCluster(make_configs(1, profile=profile, model=MODEL)) as sims,
        aiohttp.ClientSession() as http,
    ):
        url = base(sims)
        long = {"model": MODEL, "prompt": "busy", "max_tokens": 2000, "ignore_eos": True}
        busy: list[asyncio.Task[Any]] = []
        for running, waiting in ((1, 0), (1, 1)):
            busy.append(asyncio.create_task(post(http, url + "/v1/completions", long)))

            async def reached(running: int = running, waiting: int = waiting) -> bool:
                s = await stats(http, url)
                return bool(s["running"] == running and s["waiting"] == waiting)

            await poll(reached)
        status, headers, data = await post(http, url + "/v1/completions", long)
        assert (status, data["type"]) == (429, "TooManyRequestsError")
        assert headers["x-inference-pod"] == "sim-0"
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)


async def test_client_disconnect_frees_slot(
    cluster: SimCluster, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    url = base(cluster)
    body = {"model": MODEL, "prompt": "long " * 40, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    response = await http.post(url + "/v1/completions", json=body)
    assert response.status == 200
    await response.content.readline()
    during = await stats(http, url)
    assert during["running"] == 1 and during["kv_cache_usage"] > 0
    response.close()

    async def freed() -> bool:
        s = await stats(http, url)
        return bool(s["aborted"] == 1 and s["running"] == 0 and s["kv_cache_usage"] == 0)

    await poll(freed)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [], "no traceback logged"


async def test_embeddings_in_base64_as_vllm_writes_them(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """`encoding_format: base64` gets each vector as the base64 of its little-endian float32s, as
    vLLM (and OpenAI) answer it, which the openai SDK decodes; any other format than float and
    base64 is vLLM's 400. The simulator ignored the field and sent floats: a client decoding the
    base64 it asked for failed."""
    url = base(cluster)
    floats = (await post(http, url + "/v1/embeddings", {"model": MODEL, "input": "alpha"}))[2]
    status, _, data = await post(
        http, url + "/v1/embeddings", {"model": MODEL, "input": "alpha", "encoding_format": "base64"}
    )
    assert status == 200 and isinstance(data["data"][0]["embedding"], str)
    decoded = struct.unpack("<256f", base64.b64decode(data["data"][0]["embedding"]))
    assert decoded == pytest.approx(floats["data"][0]["embedding"], rel=1e-6)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    reply = await client.embeddings.create(model=MODEL, input="alpha", encoding_format="base64")
    assert struct.unpack("<256f", base64.b64decode(reply.data[0].embedding)) == decoded
    await client.close()
    status, _, error = await post(
        http, url + "/v1/embeddings", {"model": MODEL, "input": "alpha", "encoding_format": "int8"}
    )
    assert (status, error["param"]) == (400, "encoding_format")
    assert error["message"] == "'encoding_format' must be 'float' or 'base64'"


async def test_zero_embedding_dimensions_are_a_400(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    """`dimensions: 0` is refused as vLLM refuses it; it was read as absent (256 dimensions, a 200)."""
    status, _, error = await post(
        http, base(cluster) + "/v1/embeddings", {"model": MODEL, "input": "alpha", "dimensions": 0}
    )
    assert (status, error["param"]) == (400, "dimensions")


async def test_embeddings_and_responses(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = base(cluster)
    status, _, data = await post(
        http, url + "/v1/embeddings", {"model": MODEL, "input": ["alpha", "beta gamma"]}
    )
    assert status == 200 and data["object"] == "list" and len(data["data"]) == 2
    vector = data["data"][0]["embedding"]
    assert len(vector) == 256 and abs(sum(v * v for v in vector) - 1.0) < 1e-9
    again = (await post(http, url + "/v1/embeddings", {"model": MODEL, "input": "alpha", "dimensions": 256}))[
        2
    ]
    assert again["data"][0]["embedding"] == vector
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] == 3

    body = {
        "model": MODEL,
        "input": "Say hi",
        "instructions": "Be brief.",
        "max_output_tokens": 4,
        "ignore_eos": True,
    }
    status, _, data = await post(http, url + "/v1/responses", body)
    assert status == 200 and data["object"] == "response" and data["status"] == "incomplete"
    assert data["output"][0]["content"][0]["type"] == "output_text"
    assert data["usage"]["output_tokens"] == 4
    async with http.post(url + "/v1/responses", json={**body, "stream": True}) as response:
        text = await response.text()
    assert text.count("event: response.output_text.delta") == 4 and "event: response.completed" in text


async def test_a_follow_up_continues_a_stored_response_on_its_server_only(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """vLLM keeps stored responses in its process: a follow-up naming one continues the
    conversation there (its prompt holds the earlier turns, served from the prefix cache) and gets
    vLLM's 404 from any other server."""
    first_url, other_url = base(cluster, 0), base(cluster, 1)
    body = {"model": MODEL, "input": "Tell me about rivers", "max_output_tokens": 3, "ignore_eos": True}
    status, _, first = await post(http, first_url + "/v1/responses", body)
    assert status == 200 and first["id"].startswith("resp_")
    follow = {**body, "input": "And lakes?", "previous_response_id": first["id"]}
    status, _, second = await post(http, first_url + "/v1/responses", follow)
    assert status == 200, second
    alone = (await post(http, other_url + "/v1/responses", {**body, "input": "And lakes?"}))[2]
    # The continuation's prompt is the stored conversation plus the new input, mostly cached.
    assert (
        second["usage"]["input_tokens"] > first["usage"]["input_tokens"] + alone["usage"]["input_tokens"] - 8
    )
    assert second["usage"]["input_tokens_details"]["cached_tokens"] >= first["usage"]["input_tokens"] - 4
    # A streamed follow-up of the follow-up: the id of `response.created` is stored too.
    async with http.post(
        first_url + "/v1/responses", json={**follow, "previous_response_id": second["id"], "stream": True}
    ) as response:
        events = await read_sse(response)
    third = events[0]["response"]["id"]
    assert events[-1]["response"]["id"] == third
    status, _, _ = await post(http, first_url + "/v1/responses", {**follow, "previous_response_id": third})
    assert status == 200

    status, _, error = await post(http, other_url + "/v1/responses", follow)
    assert status == 404
    assert error == {
        "object": "error",
        "message": f"Response with id '{first['id']}' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }
    # `store: false` keeps nothing; a non-string id is the client's 400.
    unstored = (await post(http, first_url + "/v1/responses", {**body, "store": False}))[2]
    status, _, error = await post(
        http, first_url + "/v1/responses", {**follow, "previous_response_id": unstored["id"]}
    )
    assert status == 404 and error["param"] == "response_id"
    status, _, error = await post(http, first_url + "/v1/responses", {**follow, "previous_response_id": 7})
    assert status == 400 and error["param"] == "previous_response_id"
    # An empty id names no response: vLLM looks it up (only a null or absent one starts afresh).
    status, _, error = await post(http, first_url + "/v1/responses", {**follow, "previous_response_id": ""})
    assert (status, error["param"]) == (404, "response_id")
    assert error["message"] == "Response with id '' not found."


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json(content_type=None)


async def test_background_responses_are_polled_and_cancelled_as_in_vllm(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """`background: true` answers `queued` at once; GET /v1/responses/{id} returns the stored
    response (its final status once generated); POST .../cancel cancels a running one and is vLLM's 400
    for a finished one; another server knows neither id (404)."""
    url, other = base(cluster, 0), base(cluster, 1)
    body = {"model": MODEL, "input": "Tell me about rivers", "max_output_tokens": 3, "ignore_eos": True}
    status, _, queued = await post(http, url + "/v1/responses", {**body, "background": True})
    assert status == 200 and queued["status"] == "queued" and queued["output"] == [], queued
    response_id = queued["id"]

    async def generated() -> bool:
        status, stored = await get(http, f"{url}/v1/responses/{response_id}")
        assert status == 200, stored
        return bool(stored["status"] != "queued")

    await poll(generated)
    status, stored = await get(http, f"{url}/v1/responses/{response_id}")
    assert stored["id"] == response_id and stored["usage"]["output_tokens"] == 3
    assert stored["status"] == "incomplete"  # at max_output_tokens, as vLLM says
    assert stored["output"][0]["content"][0]["text"]
    status, error = await get(http, f"{other}/v1/responses/{response_id}")
    assert status == 404 and error["message"] == f"Response with id '{response_id}' not found."
    status, _, error = await post(http, f"{url}/v1/responses/{response_id}/cancel", None)
    assert status == 400 and error["message"] == "Cannot cancel a synchronous response.", error
    # A plain stored response is retrieved too.
    status, _, plain = await post(http, url + "/v1/responses", body)
    assert (await get(http, f"{url}/v1/responses/{plain['id']}")) == (200, plain)

    long = {**body, "max_output_tokens": 2000, "background": True}
    status, _, running = await post(http, url + "/v1/responses", long)
    assert status == 200, running
    status, _, cancelled = await post(http, f"{url}/v1/responses/{running['id']}/cancel", None)
    assert status == 200 and cancelled["status"] == "cancelled", cancelled
    assert (await get(http, f"{url}/v1/responses/{running['id']}"))[1]["status"] == "cancelled"
    assert (await stats(http, url))["running"] == 0
    status, _, error = await post(http, f"{other}/v1/responses/{running['id']}/cancel", None)
    assert status == 404 and error["param"] == "response_id"
    status, _, error = await post(http, url + "/v1/responses", {**body, "background": True, "store": False})
    assert status == 400 and error["message"] == "background can only be used when `store` is true"


async def test_logprobs_in_vllms_shapes_streamed_or_not(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    """Chat: `logprobs.content[]` with `top_logprobs` alternatives (sampled token first); completions:
    `text_offset`, `token_logprobs`, `tokens`, `top_logprobs` (logprobs + 1 entries at most, the
    sampled token among them). The same values streamed, token by token, and on every call."""
    url = base(cluster)
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name three rivers"}],
        "max_tokens": 4,
        "ignore_eos": True,
        "logprobs": True,
        "top_logprobs": 3,
    }
    status, _, whole = await post(http, url + "/v1/chat/completions", chat)
    assert status == 200, whole
    choice = whole["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode()) and -1 <= entry["logprob"] < 0
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0] == {k: entry[k] for k in ("token", "logprob", "bytes")}
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert len({t["token"] for t in top}) == 3
    assert (await post(http, url + "/v1/chat/completions", chat))[2]["choices"][0]["logprobs"] == choice[
        "logprobs"
    ]
    async with http.post(url + "/v1/chat/completions", json={**chat, "stream": True}) as response:
        frames = [f for f in await read_sse(response) if f != "[DONE]"]
    assert frames[0]["choices"][0]["logprobs"] is None  # the role frame
    assert [e for f in frames[1:] for e in f["choices"][0]["logprobs"]["content"]] == content
    plain = {k: v for k, v in chat.items() if k not in ("logprobs", "top_logprobs")}
    assert (await post(http, url + "/v1/chat/completions", plain))[2]["choices"][0]["logprobs"] is None

    completion = {"model": MODEL, "prompt": "Rivers", "max_tokens": 5, "ignore_eos": True, "logprobs": 2}
    status, _, whole = await post(http, url + "/v1/completions", completion)
    assert status == 200, whole
    logprobs = whole["choices"][0]["logprobs"]
    text = whole["choices"][0]["text"]
    assert "".join(logprobs["tokens"]) == text
    offsets = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(logprobs["tokens"]))]
    assert logprobs["text_offset"] == offsets
    assert logprobs["text_offset"][0] == 0
    for token, logprob, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert top[token] == logprob and len(top) == 2
    async with http.post(url + "/v1/completions", json={**completion, "stream": True}) as response:
        frames = [f for f in await read_sse(response) if f != "[DONE]"]
    streamed = [f["choices"][0]["logprobs"] for f in frames]
    assert {key: [v for part in streamed for v in part[key]] for key in logprobs} == logprobs

    # vLLM's engine-side limit, --max-logprobs (20); -1 asks for the whole vocabulary.
    for body, asked in (
        ({**chat, "top_logprobs": 21}, 21),
        ({**chat, "top_logprobs": -1}, 128256),
        ({**completion, "logprobs": 21}, 21),
    ):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        status, _, error = await post(http, url + path, body)
        assert (status, error) == (
            400,
            {
                "object": "error",
                "message": f"Requested sample logprobs of {asked}, which is greater than max allowed: 20 "
                f"(parameter=logprobs, value={asked})",
                "type": "BadRequestError",
                "param": "logprobs",
                "code": 400,
            },
        )


async def test_openai_sdk_reads_logprobs(cluster: SimCluster) -> None:
    client = openai.AsyncOpenAI(base_url=base(cluster) + "/v1", api_key="unused")
    try:
        chat = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=3,
            logprobs=True,
            top_logprobs=2,
            extra_body={"ignore_eos": True},
        )
        content = chat.choices[0].logprobs.content if chat.choices[0].logprobs else None
        assert content is not None and len(content) == 3
        assert all(
            len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token for entry in content
        )
        stream = await client.completions.create(
            model=MODEL,
            prompt="stream",
            max_tokens=3,
            logprobs=1,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        parts = [chunk.choices[0].logprobs async for chunk in stream if chunk.choices]
        assert [len(p.tokens or []) for p in parts if p is not None] == [1, 1, 1]
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], top_logprobs=2
            )
    finally:
        await client.close()


async def test_openai_sdk(cluster: SimCluster) -> None:
    client = openai.AsyncOpenAI(base_url=base(cluster) + "/v1", api_key="unused")
    try:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens <= 5
        stream = await client.completions.create(
            model=MODEL, prompt="stream", max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="absent", prompt="x")
    finally:
        await client.close()


async def test_openai_sdk_streams_a_response_with_its_helper(cluster: SimCluster) -> None:
    """The SDK's `responses.stream()` accumulates the events into the response: it raised
    "Received a content event for output index 0 before receiving its output item" at the first
    delta, the stream having no `response.output_item.added` (nor its text part) before it. The
    events are vLLM's, numbered from 0: created, in_progress, the item and its part opened, one
    delta a token, the text, the part and the item done, completed."""
    client = openai.AsyncOpenAI(base_url=base(cluster) + "/v1", api_key="unused")
    try:
        async with client.responses.stream(model=MODEL, input="stream me", max_output_tokens=3) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
    finally:
        await client.close()
    kinds = [event.type for event in events]
    opened = ["response.created", "response.in_progress", "response.output_item.added"]
    opened.append("response.content_part.added")
    closed = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds == [*opened, *["response.output_text.delta"] * 3, *closed, "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text and final.output_text == text and final.usage is not None and final.usage.output_tokens == 3
    (item,) = final.output
    assert item.id == events[2].item.id == events[-2].item.id  # type: ignore[union-attr]


def prefill_body(prompt: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 1,
        "kv_transfer_params": {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        },
    }


async def run_prefill_then_decode(
    http: aiohttp.ClientSession, prefill_url: str, decode_url: str
) -> dict[str, Any]:
    prompt = "disaggregated serving splits prefill from decode " * 8
    status, _, prefilled = await post(http, prefill_url + "/v1/completions", prefill_body(prompt))
    assert status == 200
    assert (
        prefilled["choices"][0]["finish_reason"] == "length" and prefilled["usage"]["completion_tokens"] == 1
    )
    kv = prefilled["kv_transfer_params"]
    assert kv["do_remote_prefill"] is True and kv["do_remote_decode"] is False and kv["tp_size"] == 1
    assert kv["remote_block_ids"] and kv["remote_host"] == "127.0.0.1" and kv["remote_request_id"]
    assert (await stats(http, prefill_url))["leases"] == 1
    decode = {"model": MODEL, "prompt": prompt, "max_tokens": 5, "ignore_eos": True, "kv_transfer_params": kv}
    status, _, decoded = await post(http, decode_url + "/v1/completions", decode)
    assert status == 200 and decoded["usage"]["completion_tokens"] == 5
    prefill_stats, decode_stats = await stats(http, prefill_url), await stats(http, decode_url)
    assert (prefill_stats["prefill_only"], prefill_stats["remote_decode"], prefill_stats["leases"]) == (
        1,
        0,
        0,
    )
    assert prefill_stats["kv_cache_usage"] == 0.0
    assert (decode_stats["prefill_only"], decode_stats["remote_decode"]) == (0, 1)
    # the decode server never prefilled: all but the last prompt token arrived by transfer
    assert decode_stats["prefix_cache_hits"] == 0
    assert decoded["usage"]["prompt_tokens_details"]["cached_tokens"] == decoded["usage"]["prompt_tokens"] - 1
    status, _, again = await post(http, decode_url + "/v1/completions", decode)
    assert (status, again) == (500, GENERATION_FAILED), (
        "the lease was read: vLLM's kv_load_failure_policy fail"
    )
    return kv


async def test_prefill_then_decode_in_process(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    kv = await run_prefill_then_decode(http, base(cluster, 0), base(cluster, 1))
    assert kv["remote_engine_id"] == cluster.servers[0].engine_id
    assert kv["remote_port"] == cluster.endpoints[0].port


async def test_prefill_then_decode_over_http(http: aiohttp.ClientSession) -> None:
    # two clusters do not share a registry, so the decode server must release the lease over HTTP
    async with (
        SimCluster(make_configs(1, name_prefix="p", profile=TINY_TEST, model=MODEL)) as prefill,
        SimCluster(make_configs(1, name_prefix="d", profile=TINY_TEST, model=MODEL)) as decode,
    ):
        await run_prefill_then_decode(http, base(prefill), base(decode))


@pytest.mark.parametrize("registry", ["in process", "over http"])
async def test_a_replayed_decode_leg_cannot_take_a_later_lease_of_the_same_blocks(
    http: aiohttp.ClientSession, registry: str
) -> None:
    """Block ids are recycled: the second prefill leg's lease holds the very blocks the first one
    held. Replaying the first (already served) decode leg must not release it. The prefill server
    has one block besides vLLM's null block, so the second leg gets the first's again whatever
    order the free queue keeps."""
    one_block = dataclasses.replace(TINY_TEST, num_gpu_blocks=2)
    prefill_configs = make_configs(1, name_prefix="p", profile=one_block, model=MODEL)
    decode_configs = make_configs(1, name_prefix="d", profile=TINY_TEST, model=MODEL)
    clusters = (
        [SimCluster([*prefill_configs, *decode_configs])]
        if registry == "in process"
        else [SimCluster(prefill_configs), SimCluster(decode_configs)]
    )
    async with contextlib.AsyncExitStack() as stack:
        for cluster in clusters:
            await stack.enter_async_context(cluster)
        prefill_url, decode_url = (endpoint.url for cluster in clusters for endpoint in cluster.endpoints)

        async def decode_leg(prompt: str) -> dict[str, Any]:
            status, _, prefilled = await post(http, prefill_url + "/v1/completions", prefill_body(prompt))
            assert status == 200
            return {"model": MODEL, "prompt": prompt, "kv_transfer_params": prefilled["kv_transfer_params"]}

        first = await decode_leg("first")
        assert (await post(http, decode_url + "/v1/completions", first))[0] == 200
        second = await decode_leg("second")
        blocks = [leg["kv_transfer_params"]["remote_block_ids"] for leg in (first, second)]
        assert blocks[0] == blocks[1], "the precondition: block ids recycled"
        status, _, replayed = await post(http, decode_url + "/v1/completions", first)
        assert (status, replayed) == (500, GENERATION_FAILED)
        assert (await stats(http, prefill_url))["leases"] == 1
        assert (await post(http, decode_url + "/v1/completions", second))[0] == 200
        assert (await stats(http, prefill_url))["leases"] == 0


@pytest.mark.parametrize("policy", ["fail", "recompute"])
async def test_a_decode_leg_whose_prefill_server_is_gone(http: aiohttp.ClientSession, policy: str) -> None:
    """vLLM's kv_load_failure_policy: `fail` (its default) ends the request with its generation
    error (500; a stream has started, so an error frame); `recompute` computes the prompt on the
    decode server and answers as if no P/D was asked for."""
    prompt = "the prefill server of this request is gone " * 6
    async with SimCluster(make_configs(1, name_prefix="p", profile=TINY_TEST, model=MODEL)) as prefill:
        status, _, prefilled = await post(http, base(prefill) + "/v1/completions", prefill_body(prompt))
        assert status == 200
    configs = make_configs(1, name_prefix="d", profile=TINY_TEST, model=MODEL, kv_load_failure_policy=policy)
    async with SimCluster(configs) as decode:
        url = base(decode) + "/v1/completions"
        body = {
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": 3,
            "ignore_eos": True,
            "kv_transfer_params": prefilled["kv_transfer_params"],
        }
        status, _, answer = await post(http, url, body)
        async with http.post(url, json={**body, "stream": True}) as response:
            stream_status, frames = response.status, await read_sse(response)
        decode_stats = await stats(http, base(decode))
    if policy == "fail":
        assert (status, answer) == (500, GENERATION_FAILED)
        assert (stream_status, frames) == (200, [GENERATION_FAILED, "[DONE]"])
        assert decode_stats["running"] == decode_stats["waiting"] == 0 and decode_stats["kv_cache_usage"] == 0
        return
    assert status == 200 and answer["usage"]["completion_tokens"] == 3, answer
    # Computed here, not transferred: nothing cached on the first call, all but the last token's
    # block on the second (the prompt is this server's now).
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert stream_status == 200 and frames[-1] == "[DONE]"
    assert [f["choices"][0]["finish_reason"] for f in frames[:-1]] == [None, None, "length"]
    assert decode_stats["prefix_cache_hits"] > 0 and decode_stats["finished"] == {"length": 2}


async def test_stream_sends_tokens_generated_before_the_kv_pull_returned(
    http: aiohttp.ClientSession,
) -> None:
    """A stand-in prefill server answers the decode leg's lease release only once the decode engine
    has generated every token: the stream starts after the request finished and must still carry
    all of them."""
    async with SimCluster(make_configs(1, name_prefix="d", profile=TINY_TEST, model=MODEL)) as decode:
        engine = decode.servers[0].engine

        async def release(request: web.Request) -> web.Response:
            async def decoded() -> bool:
                return engine.stats.finished.get("length", 0) == 1

            await poll(decoded)
            return web.json_response({"blocks": 1})

        app = web.Application()
        app.router.add_post(RELEASE_PATH, release)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            kv = {
                "do_remote_prefill": True,
                "remote_engine_id": "elsewhere",
                "remote_request_id": "elsewhere-0",
                "remote_block_ids": [0],
                "remote_host": "127.0.0.1",
                "remote_port": runner.addresses[0][1],
            }
            body = {
                "model": MODEL,
                "prompt": "late pull",
                "max_tokens": 3,
                "ignore_eos": True,
                "stream": True,
                "kv_transfer_params": kv,
            }
            async with http.post(base(decode) + "/v1/completions", json=body) as response:
                assert response.status == 200
                frames = await read_sse(response)
        finally:
            await runner.cleanup()
    assert frames[-1] == "[DONE]"
    assert [f["choices"][0]["finish_reason"] for f in frames[:-1]] == [None, None, "length"]


async def test_pd_validation(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = base(cluster) + "/v1/completions"
    status, _, data = await post(http, url, {**prefill_body("x y z"), "stream": True})
    assert status == 400 and data["message"] == "Prefill does not support streaming"
    missing = {"model": MODEL, "prompt": "x", "kv_transfer_params": {"do_remote_prefill": True}}
    status, _, data = await post(http, url, missing)
    assert status == 400 and "remote_engine_id" in data["message"] and "remote_block_ids" in data["message"]
    unknown = {
        "do_remote_prefill": True,
        "remote_engine_id": "nobody",
        "remote_request_id": "nobody-0",
        "remote_block_ids": [1, 2],
        "remote_host": "127.0.0.1",
        "remote_port": cluster.endpoints[0].port,
    }
    status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "kv_transfer_params": unknown})
    assert (status, data) == (500, GENERATION_FAILED)
    assert (await stats(http, base(cluster)))["running"] == 0


async def test_kv_events_on_sub_socket(http: aiohttp.ClientSession) -> None:
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    configs = make_configs(
        1,
        profile=TINY_TEST,
        model=MODEL,
        kv_events_endpoint=f"tcp://127.0.0.1:{port}",
        lora_modules=(LoraModule("alpha"),),
    )
    try:
        async with SimCluster(configs) as sims:
            endpoint = sims.endpoints[0]
            prompt = "kv events carry block hashes " * 6
            messages: list[list[bytes]] = []
            stored: list[Any] = []
            # PUB drops messages until the subscription reaches it: send until a BlockStored arrives
            for attempt in range(50):
                body = {"model": "alpha", "prompt": f"{attempt} {prompt}", "max_tokens": 1}
                await post(http, endpoint.url + "/v1/completions", body)
                while await sub.poll(50):
                    frames = await sub.recv_multipart()
                    messages.append(frames)
                    batch = msgpack.unpackb(frames[2])
                    stored.extend(e for e in batch[1] if e[0] == "BlockStored")
                if stored:
                    break
            assert stored
            topic, seq, _ = messages[-1]
            assert topic == f"kv@127.0.0.1:{endpoint.port}@{MODEL}".encode()
            assert len(seq) == 8
            seqs = [int.from_bytes(m[1], "big") for m in messages]
            assert seqs == sorted(seqs)
            event = stored[0]
            tag, hashes, parent, token_ids, block_size, lora_id, medium, lora_name = event
            assert (tag, block_size, medium, lora_id, lora_name) == ("BlockStored", 16, "GPU", 1, "alpha")
            assert parent is None and len(token_ids) == 16 * len(hashes)
            async with http.post(endpoint.url + "/reset_prefix_cache") as response:
                assert response.status == 200
            cleared = False
            while not cleared and await sub.poll(2000):
                batch = msgpack.unpackb((await sub.recv_multipart())[2])
                cleared = ["AllBlocksCleared"] in batch[1]
            assert cleared
    finally:
        sub.close()
        context.term()


async def test_a_server_failing_to_start_leaves_nothing_listening() -> None:
    """The KV-event socket fails after the HTTP listener is up: the listener is closed again."""
    port = free_port()
    configs = make_configs(1, port=port, profile=TINY_TEST, kv_events_endpoint="tcp://127.0.0.1:none")
    with pytest.raises(zmq.ZMQError):
        await SimCluster(configs).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


async def test_cli_ready_file_and_sigterm(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    ready = tmp_path / "ready.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epp.cli", "--log-level", "WARNING", "sim", "--count", "2", "--port", "0",
        "--profile", "tiny-test", "--time-scale", "0.5", "--name-prefix", "cli", "--ready-file", str(ready),
        "--max-n-sequences", "2",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:

        async def written() -> bool:
            return ready.exists()

        await poll(written)
        endpoints = json.loads(ready.read_text())["endpoints"]
        assert [e["name"] for e in endpoints] == ["cli-0", "cli-1"]
        for endpoint in endpoints:
            async with http.get(f"http://{endpoint['host']}:{endpoint['port']}/health") as response:
                assert response.status == 200 and response.headers["x-inference-pod"] == endpoint["name"]
        url = f"http://{endpoints[0]['host']}:{endpoints[0]['port']}/v1/completions"
        status, _, data = await post(http, url, {"model": MODEL, "prompt": "x", "n": 3})
        assert status == 400 and data["message"].startswith("n must be at most 2, got 3.")
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
