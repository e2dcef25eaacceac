"""Prefill-leg and decode-leg bodies per API and connector: what is forced, what is restored."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from epp.sidecar.connectors import (
    NIXL_PREFILL_PARAMS,
    nixl_v1_decode_body,
    nixl_v1_prefill_body,
    nixlv2_decode_body,
    nixlv2_prefill_body,
    sglang_body,
)
from epp.sidecar.hostport import HostPort

PREFILLER_PARAMS = {
    "do_remote_decode": False,
    "do_remote_prefill": True,
    "remote_engine_id": "engine-7",
    "remote_block_ids": [3, 4, 5],
    "remote_host": "10.0.0.7",
    "remote_port": 5600,
    "tp_size": 1,
}
PREFILL_REPLY = {"id": "cmpl-1", "kv_transfer_params": PREFILLER_PARAMS, "usage": {"prompt_tokens": 9}}

CHAT_WITH_LIMITS = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_tokens": 50,
    "max_completion_tokens": 40,
    "min_tokens": 5,
    "kv_transfer_params": {"do_remote_prefill": True, "remote_host": "client-chosen"},
}
CHAT_BARE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION_WITH_LIMITS = {"model": "m", "prompt": "once upon", "max_tokens": 64, "stream": False}
COMPLETION_BARE = {"model": "m", "prompt": "once upon"}
RESPONSES_WITH_LIMITS = {"model": "m", "input": "hello", "max_output_tokens": 80, "stream": True}
RESPONSES_BARE = {"model": "m", "input": "hello"}
GENERATE = {"prompt_token_ids": [1, 2], "sampling_params": {"temperature": 0.5, "max_tokens": 30}}

CHAT_STYLE_CASES = [
    ("/v1/chat/completions", CHAT_WITH_LIMITS),
    ("/v1/chat/completions", CHAT_BARE),
    ("/v1/completions", COMPLETION_WITH_LIMITS),
    ("/v1/completions", COMPLETION_BARE),
]
OTHER_API_CASES = [
    ("/v1/responses", RESPONSES_WITH_LIMITS),
    ("/v1/responses", RESPONSES_BARE),
    ("/inference/v1/generate", GENERATE),
]


@pytest.mark.parametrize(("route", "original"), [*CHAT_STYLE_CASES, ("/v1/messages", CHAT_BARE)])
def test_nixlv2_prefill_body_for_chat_style_apis(route: str, original: dict[str, Any]) -> None:
    before = copy.deepcopy(original)
    body = nixlv2_prefill_body(original, route)
    assert body["kv_transfer_params"] == NIXL_PREFILL_PARAMS
    assert body["stream"] is False
    assert "stream_options" not in body
    assert (body["max_tokens"], body["max_completion_tokens"], body["min_tokens"]) == (1, 1, 1)
    assert body["model"] == original["model"]
    assert original == before, "the client's body is never mutated"


@pytest.mark.parametrize("original", [RESPONSES_WITH_LIMITS, RESPONSES_BARE])
def test_nixlv2_prefill_body_for_responses_api(original: dict[str, Any]) -> None:
    body = nixlv2_prefill_body(original, "/v1/responses")
    assert body["max_output_tokens"] == 1
    assert "max_tokens" not in body and "min_tokens" not in body
    assert body["stream"] is False
    assert body["kv_transfer_params"]["do_remote_decode"] is True


@pytest.mark.parametrize("background", [True, "true"], ids=["true", "lax 'true'"])
def test_a_background_response_is_prefilled_in_the_foreground(background: object) -> None:
    """The prefill reply must carry the KV location now. With the client's `background: true` the
    prefiller answered a queued response without `kv_transfer_params` ("the decoder prefills
    again": the prompt was prefilled twice) while it ran the prefill anyway, holding the blocks
    for a pull that never came. The decode leg keeps the client's `background`."""
    original = {**RESPONSES_WITH_LIMITS, "background": background, "stream": False}
    for prefill in (
        nixlv2_prefill_body(original, "/v1/responses"),
        nixl_v1_prefill_body(original, "/v1/responses"),
    ):
        assert prefill["background"] is False
    assert nixlv2_decode_body(original, PREFILL_REPLY)["background"] == background
    assert "background" not in nixlv2_prefill_body(RESPONSES_BARE, "/v1/responses")  # absent stays absent


@pytest.mark.parametrize("store", [True, None, "absent"])
def test_the_prefiller_does_not_store_the_prefill_reply(store: object) -> None:
    """vLLM stores a response unless `store` is false, and never drops one: the prefill leg, whose
    1-token reply nobody asks for again, left one stored response per P/D Responses request on the
    prefill pod. The decode leg keeps the client's `store` (absent stays absent)."""
    original = dict(RESPONSES_WITH_LIMITS) if store == "absent" else {**RESPONSES_WITH_LIMITS, "store": store}
    for prefill in (
        nixlv2_prefill_body(original, "/v1/responses"),
        nixl_v1_prefill_body(original, "/v1/responses"),
    ):
        assert prefill["store"] is False
    decode = nixlv2_decode_body(original, PREFILL_REPLY)
    assert decode.get("store", "absent") == store
    assert "store" not in nixlv2_prefill_body(
        CHAT_BARE, "/v1/chat/completions"
    )  # only the Responses API stores


def test_nixlv2_prefill_body_for_generate_creates_and_copies_sampling_params() -> None:
    body = nixlv2_prefill_body(GENERATE, "/inference/v1/generate")
    assert body["sampling_params"] == {"temperature": 0.5, "max_tokens": 1, "min_tokens": 1}
    assert GENERATE["sampling_params"] == {"temperature": 0.5, "max_tokens": 30}
    bare = nixlv2_prefill_body({"prompt_token_ids": [1]}, "/inference/v1/generate")
    assert bare["sampling_params"] == {"max_tokens": 1, "min_tokens": 1}


def test_nixlv2_prefill_params_are_fresh_per_request() -> None:
    first = nixlv2_prefill_body(CHAT_BARE, "/v1/chat/completions")
    first["kv_transfer_params"]["remote_host"] = "tampered"
    assert nixlv2_prefill_body(CHAT_BARE, "/v1/chat/completions")["kv_transfer_params"] == NIXL_PREFILL_PARAMS


@pytest.mark.parametrize(("route", "original"), [*CHAT_STYLE_CASES, *OTHER_API_CASES])
def test_nixlv2_decode_body_restores_the_client_fields_exactly(route: str, original: dict[str, Any]) -> None:
    # Built after the prefill body, as the sidecar does, to show the prefill rewrite leaves no trace.
    nixlv2_prefill_body(original, route)
    body = nixlv2_decode_body(original, PREFILL_REPLY)
    assert body["kv_transfer_params"] == PREFILLER_PARAMS
    # Fields the client left out stay out (no `stream: false`, no `max_tokens: null`).
    assert {k: v for k, v in body.items() if k != "kv_transfer_params"} == {
        k: v for k, v in original.items() if k != "kv_transfer_params"
    }


def test_nixlv2_decode_body_without_prefiller_params_sends_null() -> None:
    body = nixlv2_decode_body(CHAT_WITH_LIMITS, {"id": "x"})
    assert "kv_transfer_params" in body and body["kv_transfer_params"] is None


def test_nixl_v1_flat_form() -> None:
    original = {**COMPLETION_WITH_LIMITS, "stream": True, "stream_options": {"include_usage": True}}
    prefill = nixl_v1_prefill_body(original, "/v1/completions")
    assert prefill["do_remote_decode"] is True
    assert prefill["stream"] is False and "stream_options" not in prefill
    assert prefill["max_tokens"] == 64, "the legacy form does not cap tokens"
    assert "kv_transfer_params" not in prefill
    reply = {"remote_block_ids": [1], "remote_engine_id": "e", "remote_host": "h", "remote_port": 7}
    decode = nixl_v1_decode_body({**original, "do_remote_decode": True}, reply)
    assert "do_remote_decode" not in decode
    assert decode["do_remote_prefill"] is True
    assert {k: decode[k] for k in reply} == reply
    assert decode["stream"] is True and decode["stream_options"] == {"include_usage": True}


def test_sglang_body_carries_the_bootstrap_fields() -> None:
    target = HostPort.parse("[fd00::7]:8000")
    body = sglang_body(CHAT_WITH_LIMITS, target, 8998, random.Random(1))
    assert body["bootstrap_host"] == "fd00::7"
    assert body["bootstrap_port"] == 8998
    assert isinstance(body["bootstrap_room"], int) and body["bootstrap_room"] > 0
    assert body["stream"] is True and body["max_tokens"] == 50, "SGLang legs get the client's body"
