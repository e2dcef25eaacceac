"""Pure pieces of the HTTP layer: request parsing, output lengths, P/D params, KV-event encoding,
LoRA flags and the metrics page."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from epp.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent, encode_batch, topic_for
from epp.sim.cluster import make_configs
from epp.sim.config import LoraModule, parse_lora_modules
from epp.sim.engine import Engine, Request
from epp.sim.metrics import build_registry, render
from epp.sim.openai_api import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    NATURAL_MAX_TOKENS,
    ApiError,
    output_length,
    parse_chat,
    parse_completion,
    parse_embedding_input,
    parse_responses,
)
from epp.sim.pd import parse_kv_transfer_params, prefill_result_params
from epp.sim.profiles import PROFILES, TINY_TEST, get_profile
from epp.sim.tokens import render_chat, tokenize


def test_completion_prompt_forms_and_defaults() -> None:
    parsed = parse_completion({"model": "m", "prompt": "hello world"})
    assert parsed.prompts == [tokenize("hello world")]
    assert parsed.max_tokens == COMPLETIONS_DEFAULT_MAX_TOKENS and not parsed.stream
    assert parse_completion({"model": "m", "prompt": ["a", "b"]}).prompts == [tokenize("a"), tokenize("b")]
    assert parse_completion({"model": "m", "prompt": [1, 2]}).prompts == [[1, 2]]
    assert parse_completion({"model": "m", "prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]
    streamed = parse_completion(
        {
            "model": "m",
            "prompt": "x",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 3,
        }
    )
    assert streamed.stream and streamed.include_usage and streamed.max_tokens == 3


def test_whole_floats_count_as_integers_as_in_vllm() -> None:
    """`max_tokens: 512.0` (a Python client's computed limit) got 400 "'max_tokens' must be an
    integer >= 1", which vLLM's pydantic model accepts."""
    parsed = parse_completion({"model": "m", "prompt": "x", "max_tokens": 512.0, "n": 2.0, "min_tokens": 1e1})
    assert (parsed.max_tokens, parsed.n, parsed.min_tokens) == (512, 2, 10)


@pytest.mark.parametrize(
    ("value", "streams"),
    [
        *(("true", True), ("True", True), (1, True), (1.0, True), ("yes", True), ("on", True)),
        *(("false", False), ("0", False), (0, False), (None, False)),
    ],
)
def test_stream_is_read_as_vllms_lax_boolean(value: object, streams: bool) -> None:
    """`"stream": "true"` did not stream: vLLM's pydantic field reads it (and 1, "yes") as true."""
    for parse, body in (
        (parse_completion, {"model": "m", "prompt": "x"}),
        (parse_chat, {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        (parse_responses, {"model": "m", "input": "x"}),
    ):
        assert parse({**body, "stream": value}).stream is streams, (parse, value)


def test_ignore_eos_and_include_usage_are_read_as_vllms_lax_booleans() -> None:
    body = {"model": "m", "prompt": "x"}
    assert parse_completion({**body, "ignore_eos": "true"}).ignore_eos
    assert not parse_completion({**body, "ignore_eos": 0}).ignore_eos
    streamed = {**body, "stream": "true"}
    assert parse_completion({**streamed, "stream_options": {"include_usage": "1"}}).include_usage
    assert not parse_completion({**streamed, "stream_options": {"include_usage": "off"}}).include_usage
    # vLLM's StreamOptions: include_usage defaults to true; null is no usage
    assert parse_completion({**streamed, "stream_options": {}}).include_usage
    assert not parse_completion({**streamed, "stream_options": {"include_usage": None}}).include_usage
    # vLLM checks the JSON `stream` first: "false" is truthy there, then read as false
    quiet = parse_completion({**body, "stream": "false", "stream_options": {"include_usage": True}})
    assert not quiet.stream and not quiet.include_usage
    # vLLM's Responses API has no stream_options: an unknown field there, ignored
    assert not parse_responses({"model": "m", "input": "x", "stream_options": {"include_usage": 2}}).stream


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"stream": 2}, "stream", "'stream' must be a boolean"),
        ({"stream": []}, "stream", "'stream' must be a boolean"),
        ({"stream": "maybe"}, "stream", "'stream' must be a boolean"),
        ({"stream": " true"}, "stream", "'stream' must be a boolean"),
        ({"ignore_eos": 2}, "ignore_eos", "'ignore_eos' must be a boolean"),
        ({"ignore_eos": None}, "ignore_eos", "'ignore_eos' must be a boolean"),
        (
            {"stream": True, "stream_options": {"include_usage": []}},
            "stream_options",
            "'stream_options.include_usage' must be a boolean",
        ),
        (
            {"stream_options": {"include_usage": True}},
            "stream_options",
            "Stream options can only be defined when `stream=True`.",
        ),
        (
            {"stream": 0, "stream_options": {"include_usage": True}},
            "stream_options",
            "Stream options can only be defined when `stream=True`.",
        ),
    ],
)
def test_hostile_stream_flags_are_vllms_400(fields: dict[str, object], param: str, message: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields})
    assert info.value.body() == {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": param,
        "code": 400,
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": [1, "a"]}, "prompt"),
        ({"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": 2.5}, "max_tokens"),
        ({"model": "m", "prompt": "x", "stream_options": 3}, "stream_options"),
    ],
)
def test_completion_validation(body: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_completion(body)
    assert info.value.status == 400 and info.value.param == param
    assert info.value.body()["type"] == "BadRequestError"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "Either prompt or prompt_embeds must be provided and non-empty."),
        ({"model": "m", "prompt": None}, "Either prompt or prompt_embeds must be provided and non-empty."),
        ({"model": "m", "prompt": ""}, "Either prompt or prompt_embeds must be provided and non-empty."),
        ({"model": "m", "prompt": []}, "please provide at least one prompt"),
    ],
)
def test_a_missing_or_empty_prompt_is_refused_in_vllms_words(body: dict[str, object], message: str) -> None:
    """vLLM's request model refuses a prompt left out, null or "" (naming param `prompt`); its
    prompt parser an empty list (naming none). Both 400."""
    with pytest.raises(ApiError) as info:
        parse_completion(body)
    assert info.value.status == 400
    assert info.value.body() == {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None if body.get("prompt") == [] else "prompt",
        "code": 400,
    }


def test_chat_and_responses_render_the_same_template() -> None:
    chat = parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
            ],
            "max_completion_tokens": 9,
        }
    )
    responses = parse_responses({"model": "m", "instructions": "be brief", "input": "hi"})
    expected = tokenize(render_chat([("system", "be brief"), ("user", "hi")]))
    assert chat.prompts == responses.prompts == [expected]
    assert chat.max_tokens == 9 and responses.max_tokens is None
    with pytest.raises(ApiError):
        parse_chat({"model": "m", "messages": [{"content": "no role"}]})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"type": "text", "text": 5}], "a content part's 'text' must be a string"),
        (["hi"], "content parts must be objects"),
        (3, "message content must be a string or a list of content parts"),
    ],
)
def test_chat_content_parts_are_checked_as_vllm_does(content: object, message: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat({"model": "m", "messages": [{"role": "user", "content": content}]})
    assert info.value.status == 400 and message in str(info.value.body())


def test_embedding_input() -> None:
    assert parse_embedding_input({"input": ["a b", [5, 6]]}) == [tokenize("a b"), [5, 6]]
    with pytest.raises(ApiError):
        parse_embedding_input({})


def test_output_length() -> None:
    assert output_length(50, seed=3, ignore_eos=True, min_tokens=0) == (50, "length")
    assert output_length(600, seed=9, ignore_eos=False, min_tokens=0) == (10, "stop")
    assert output_length(5, seed=9, ignore_eos=False, min_tokens=0) == (5, "length")
    assert output_length(600, seed=9, ignore_eos=False, min_tokens=20) == (20, "stop")
    assert output_length(10_000, seed=NATURAL_MAX_TOKENS - 1, ignore_eos=False, min_tokens=0) == (512, "stop")


def test_kv_transfer_params() -> None:
    assert parse_kv_transfer_params(None).prefill_leg is False
    leg = parse_kv_transfer_params(
        {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None}
    )
    assert leg.prefill_leg and leg.remote is None
    params = prefill_result_params("engine-1", "req-7", [3, 4], "127.0.0.1", 8000)
    decode = parse_kv_transfer_params(params)
    assert not decode.prefill_leg and decode.remote is not None
    remote = decode.remote
    assert (remote.engine_id, remote.request_id, remote.block_ids, remote.port) == (
        "engine-1",
        "req-7",
        [3, 4],
        8000,
    )
    with pytest.raises(ApiError, match="remote_host"):
        parse_kv_transfer_params({**params, "remote_host": ""})
    without_id = {key: value for key, value in params.items() if key != "remote_request_id"}
    with pytest.raises(ApiError, match="remote_request_id"):
        parse_kv_transfer_params(without_id)
    with pytest.raises(ApiError):
        parse_kv_transfer_params({**params, "do_remote_decode": True})
    with pytest.raises(ApiError):
        parse_kv_transfer_params("yes")


def test_lora_module_forms() -> None:
    assert parse_lora_modules(["a,b"]) == (LoraModule("a"), LoraModule("b"))
    assert parse_lora_modules(["x=/p/x", '{"name": "y", "path": "/p/y", "base_model_name": "m"}']) == (
        LoraModule("x", "/p/x"),
        LoraModule("y", "/p/y", "m"),
    )
    with pytest.raises(ValueError):
        parse_lora_modules(['{"path": "/p"}'])


def test_kv_event_wire_format() -> None:
    events: list[KVEvent] = [
        BlockStored([11, 12], None, list(range(32)), "alpha"),
        BlockStored([13], 12, list(range(16)), None),
        BlockStored([14, 15], None, list(range(32)), None, extra_keys=[["salt"], None]),
        BlockRemoved([11]),
        AllBlocksCleared(),
    ]
    ts, decoded = msgpack.unpackb(encode_batch(events, 12.5, 16, {"alpha": 1}))  # dp rank omitted
    assert ts == 12.5
    assert decoded == [
        ["BlockStored", [11, 12], None, list(range(32)), 16, 1, "GPU", "alpha"],
        ["BlockStored", [13], 12, list(range(16)), 16, None, "GPU", None],
        ["BlockStored", [14, 15], None, list(range(32)), 16, None, "GPU", None, [["salt"], None]],
        ["BlockRemoved", [11], "GPU"],
        ["AllBlocksCleared"],
    ]
    assert topic_for("10.0.0.1", 8000, "m") == "kv@10.0.0.1:8000@m"


def test_metrics_page_reads_engine_state() -> None:
    engine = Engine(TINY_TEST, "m")
    registry = build_registry(engine, "m")
    engine.add(Request("a", list(range(40)), 5, 0.0, lora="alpha"))
    engine.add(Request("b", list(range(40)), 5, 0.0, lora="beta"))
    engine.add(Request("c", list(range(40)), 5, 0.0, lora="gamma"))
    engine.step(0.0)
    page = render(registry).decode()
    assert 'vllm:num_requests_running{model_name="m"} 2.0' in page
    assert 'vllm:num_requests_waiting{model_name="m"} 1.0' in page
    assert 'running_lora_adapters="alpha,beta",waiting_lora_adapters="gamma"' in page
    assert f'vllm:kv_cache_usage_perc{{model_name="m"}} {6 / (TINY_TEST.num_gpu_blocks - 1)}' in page


def test_make_configs_names_and_ports() -> None:
    configs = make_configs(3, name_prefix="gpu", port=9000, profile=TINY_TEST, time_scale=0.5)
    assert [(c.name, c.port) for c in configs] == [("gpu-0", 9000), ("gpu-1", 9001), ("gpu-2", 9002)]
    assert all(c.time_scale == 0.5 and c.profile is TINY_TEST for c in configs)
    assert [c.port for c in make_configs(2)] == [0, 0]


def test_profiles() -> None:
    assert set(PROFILES) >= {"llama-3.1-8b-h100", "qwen3-32b-h100-tp2", "tiny-test"}
    llama = get_profile("llama-3.1-8b-h100")
    assert llama.kv_bytes_per_token == 131_072
    assert 5e-3 < llama.step_base_s < 8e-3
    assert llama.with_overrides(max_num_seqs=4, block_size=None).max_num_seqs == 4
    with pytest.raises(KeyError, match="known"):
        get_profile("nope")


@pytest.mark.parametrize(
    ("parse", "body", "status_param_message"),
    [
        (
            parse_chat,
            {"top_logprobs": -2},
            ("top_logprobs", "`top_logprobs` must be a positive value or -1."),
        ),
        (
            parse_chat,
            {"top_logprobs": 3},
            ("top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true."),
        ),
        (
            parse_chat,
            {"top_logprobs": -1},
            ("top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true."),
        ),
        # Changed to vLLM's answers: a null chat `echo` (its field is not optional), a logprobs
        # count that is not a JSON number (vLLM checks that before pydantic's lax read), a
        # completions `logprobs` below -1, null where vLLM's integer field is not optional.
        (parse_chat, {"echo": None}, ("echo", "'echo' must be a boolean")),
        (
            parse_chat,
            {"logprobs": True, "top_logprobs": "5"},
            ("top_logprobs", "`top_logprobs` must be an integer."),
        ),
        (parse_completion, {"logprobs": "5"}, ("logprobs", "`logprobs` must be an integer.")),
        (parse_completion, {"logprobs": -2}, ("logprobs", "`logprobs` must be a positive value or -1.")),
        (
            parse_completion,
            {"prompt_logprobs": "1"},
            ("prompt_logprobs", "`prompt_logprobs` must be an integer."),
        ),
        (parse_completion, {"n": None}, ("n", "'n' must be an integer")),
        (parse_chat, {"min_tokens": None}, ("min_tokens", "'min_tokens' must be an integer")),
    ],
)
def test_logprobs_are_refused_as_vllm_refuses_them(
    parse: Any, body: dict[str, Any], status_param_message: tuple[str, str]
) -> None:
    assert refusal(parse, body) == (400, *status_param_message)


def refusal(parse: Any, body: dict[str, Any]) -> tuple[int, str | None, str]:
    base = {"model": "m", "prompt": "x", "input": "x", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ApiError) as refused:
        parse({**base, **body})
    return refused.value.status, refused.value.param, refused.value.message


def test_logprobs_counts_as_vllm_samples_them() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert parse_chat(chat).logprobs is None
    assert parse_chat({**chat, "top_logprobs": 0}).logprobs is None  # 0 needs no `logprobs`
    assert parse_chat({**chat, "logprobs": True}).logprobs == 0
    assert parse_chat({**chat, "logprobs": True, "top_logprobs": 20}).logprobs == 20
    assert parse_chat({**chat, "logprobs": True, "top_logprobs": -1}).logprobs == 128256  # the vocabulary
    assert parse_chat({**chat, "logprobs": False, "top_logprobs": 0}).logprobs is None
    assert parse_completion({"model": "m", "prompt": "x", "logprobs": 0}).logprobs == 0
    assert parse_completion({"model": "m", "prompt": "x", "logprobs": 5.0}).logprobs == 5


def test_fields_are_read_as_vllms_lax_pydantic_models_read_them() -> None:
    """vLLM takes a boolean field's 1, "yes", "off" and an integer field's `true`, "5", `5.0`
    (pydantic's lax mode); so does the simulator, with the same meaning."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    for yes in (True, 1, 1.0, "true", "TRUE", "yes", "on", "t", "y", "1"):
        assert parse_chat({**chat, "logprobs": yes, "top_logprobs": 2}).logprobs == 2, yes
    for no in (False, 0, 0.0, "false", "No", "off", "f", "n", "0", None):
        assert parse_chat({**chat, "logprobs": no}).logprobs is None, no
        assert parse_completion({"model": "m", "prompt": "x", "echo": no}).logprobs is None
        if no is not None:  # chat's `echo` is not optional
            assert parse_chat({**chat, "echo": no}).logprobs is None
    # vLLM checks `top_logprobs` against the JSON `logprobs` before reading it: "false" passes,
    # then means false.
    assert parse_chat({**chat, "logprobs": "false", "top_logprobs": 3}).logprobs is None
    assert parse_chat({**chat, "logprobs": True, "top_logprobs": True}).logprobs == 1
    completion = {"model": "m", "prompt": "x"}
    for five in (5, 5.0, "5", " 5 ", "5.00", "+5", "0_5"):
        assert parse_completion({**completion, "max_tokens": five, "n": five}).max_tokens == 5, five
        assert parse_completion({**completion, "n": five}).n == 5
        assert parse_chat({**chat, "max_completion_tokens": five}).max_tokens == 5
        assert parse_chat({**chat, "priority": five}).priority == 5
    assert parse_completion({**completion, "max_tokens": True}).max_tokens == 1
    assert parse_completion({**completion, "min_tokens": "2"}).min_tokens == 2
    assert parse_chat({**chat, "n": None}).n == 1  # chat's `n` may be null
    # Completions `logprobs` -1: the whole vocabulary, as chat's `top_logprobs` -1.
    assert parse_completion({**completion, "logprobs": -1}).logprobs == 128256
    assert parse_completion({**completion, "logprobs": 3.0}).logprobs == 3
    responses = {"model": "m", "input": "x"}
    assert parse_responses({**responses, "store": "no"}).conversation.store is False  # type: ignore[union-attr]
    stored = parse_responses({**responses, "store": 1, "background": "yes"}).conversation
    assert stored is not None and stored.store and stored.background
    with pytest.raises(ApiError, match="background can only be used when `store` is true"):
        parse_responses({**responses, "store": "off", "background": "on"})
    # What lax mode does not read stays refused: a boolean from 2, "maybe", " true" or an object,
    # an integer from a fraction or a word; null where the field is not optional.
    for value in (2, 0.5, "maybe", " true", "", {}):
        assert refusal(parse_chat, {"logprobs": value}) == (400, "logprobs", "'logprobs' must be a boolean")
        assert refusal(parse_responses, {"store": value}) == (400, "store", "'store' must be a boolean")
    assert refusal(parse_chat, {"echo": "yes"}) == (400, "echo", "'echo' is not simulated: send it as false")
    for value in (2.5, "5.5", "5.", "1e3", "two", None):
        assert refusal(parse_chat, {"priority": value}) == (400, "priority", "'priority' must be an integer")
    assert refusal(parse_chat, {"logprobs": True, "top_logprobs": 2.5})[1:] == (
        "top_logprobs",
        "'top_logprobs' must be an integer",
    )


@pytest.mark.parametrize(
    "parse", [parse_completion, parse_chat, parse_responses], ids=["completions", "chat", "responses"]
)
@pytest.mark.parametrize("field", ["seed", "priority"])
@pytest.mark.parametrize("value", [2**63, 10**20, -(2**63) - 1])
def test_a_seed_or_priority_past_64_bits_is_vllms_400_naming_the_value_received(
    parse: Any, field: str, value: int
) -> None:
    """vLLM bounds `seed` and `priority` to 64 bits (pydantic's ge/le, a 400); the simulator
    ignored the seed and took any priority."""
    message = f"'{field}' must be between -2**63 and 2**63 - 1 (a 64-bit integer), got {value}"
    assert refusal(parse, {field: value}) == (400, field, message)
    base = {"model": "m", "prompt": "x", "input": "x", "messages": [{"role": "user", "content": "x"}]}
    for within in (2**63 - 1, -(2**63), "7"):
        assert parse({**base, field: within}).priority == (int(within) if field == "priority" else 0)
