"""OpenAI body parsing: what each API contributes to prefix matching, and what bad input gets."""

from __future__ import annotations

import gzip
import sys

import orjson
import pytest

from epp.requests import ApiKind, RequestError, jsontext
from epp.requests.parser import api_kind, decode_body, parse_request
from tests.unit.deep_json import DEEP_FIELDS, deep_body


def parse(body: object, path: str = "/v1/completions") -> object:
    return parse_request(orjson.dumps(body), path, {}, "rid")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/completions", ApiKind.COMPLETIONS),
        ("/v1/chat/completions", ApiKind.CHAT),
        ("/v1/chat/completions?x=1", ApiKind.CHAT),
        ("/v1/responses", ApiKind.RESPONSES),
        ("/v1/embeddings", ApiKind.EMBEDDINGS),
        ("/v1/conversations", ApiKind.CONVERSATIONS),
        ("/tokenize", ApiKind.OTHER),
    ],
)
def test_api_kind_by_path_suffix(path: str, kind: ApiKind) -> None:
    assert api_kind(path) is kind


def test_completions_string_prompt() -> None:
    req = parse({"model": "m", "prompt": "hello there", "max_tokens": 7, "stream": True, "cache_salt": "s"})
    assert req.prompt == b"hello there"
    assert req.token_ids is None
    assert (req.model, req.target_model, req.stream, req.max_tokens, req.cache_salt) == (
        "m",
        "m",
        True,
        7,
        "s",
    )
    assert req.prompt_tokens == 2


def test_completions_list_of_strings_joined_with_a_space() -> None:
    assert parse({"model": "m", "prompt": ["a", "b"]}).prompt == b"a b"


def test_completions_token_ids_flat_and_nested() -> None:
    assert parse({"model": "m", "prompt": [1, 2, 3]}).token_ids == [1, 2, 3]
    nested = parse({"model": "m", "prompt": [[1, 2], [3]]})
    assert nested.token_ids == [1, 2, 3]
    assert nested.prompt_tokens == 3


def test_chat_messages_with_string_and_content_parts() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    req = parse({"model": "m", "messages": messages, "max_completion_tokens": 9}, "/v1/chat/completions")
    assert req.api is ApiKind.CHAT
    assert req.prompt == orjson.dumps(messages)
    assert req.max_tokens == 9


def test_shared_system_prompt_gives_a_shared_prefix() -> None:
    system = {"role": "system", "content": "You are a helpful assistant. " * 20}
    a = parse({"model": "m", "messages": [system, {"role": "user", "content": "q1"}]}, "/v1/chat/completions")
    b = parse({"model": "m", "messages": [system, {"role": "user", "content": "q2"}]}, "/v1/chat/completions")
    common = len(orjson.dumps([system])) - 1
    assert a.prompt[:common] == b.prompt[:common]


def test_responses_and_embeddings() -> None:
    resp = parse(
        {"model": "m", "input": "hi", "instructions": "sys", "max_output_tokens": 4}, "/v1/responses"
    )
    assert resp.prompt == orjson.dumps([{"instructions": "sys"}, {"input": "hi"}])
    tools = [{"type": "function", "name": "f"}]
    with_tools = parse(
        {"model": "m", "input": [{"role": "user", "content": "q"}], "tools": tools}, "/v1/responses"
    )
    assert with_tools.prompt == orjson.dumps(
        [{"tools": tools}, {"input": [{"role": "user", "content": "q"}]}]
    )
    assert resp.max_tokens == 4
    emb = parse({"model": "m", "input": "text"}, "/v1/embeddings")
    assert emb.prompt == b"text"
    assert parse({"model": "m", "input": [5, 6]}, "/v1/embeddings").token_ids == [5, 6]


def test_smallest_token_limit_wins() -> None:
    assert parse({"model": "m", "prompt": "x", "max_tokens": 10, "max_completion_tokens": 4}).max_tokens == 4


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/responses"])
def test_optional_fields_sent_as_null_mean_unset(path: str) -> None:
    """`"stream": null` (OpenAI types it "boolean or null"; clients that serialise every optional
    field send it) was a 400 'stream must be a boolean', which vLLM and GIE both accept as absent;
    `"cache_salt": null` likewise."""
    body = {"model": "m", "prompt": "x", "messages": [{"role": "user", "content": "x"}], "input": "x"}
    request = parse({**body, "stream": None, "cache_salt": None, "max_tokens": None}, path)
    assert (request.stream, request.cache_salt, request.max_tokens) == (False, "", None)  # type: ignore[attr-defined]


def test_a_whole_token_limit_written_as_a_float_counts() -> None:
    """vLLM accepts `max_tokens: 512.0` (and `1e3`); the EPP answered them 400."""
    assert (
        parse_request(
            b'{"model": "m", "prompt": "x", "max_tokens": 512.0}', "/v1/completions", {}, "r"
        ).max_tokens
        == 512
    )
    assert (
        parse_request(
            b'{"model": "m", "prompt": "x", "max_tokens": 1e3}', "/v1/completions", {}, "r"
        ).max_tokens
        == 1000
    )
    body = {"model": "m", "messages": [{"role": "u", "content": "x"}], "max_completion_tokens": 7.0}
    assert parse(body, "/v1/chat/completions").max_tokens == 7


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({"model": "m"}, "/v1/completions", "invalid completions request: must have prompt field"),
        (
            {"model": "m", "prompt": None},
            "/v1/completions",
            "invalid completions request: must have prompt field",
        ),
        (
            {"model": "m", "prompt": ""},
            "/v1/completions",
            "invalid completions request: prompt is an empty string",
        ),
        (
            {"model": "m", "prompt": []},
            "/v1/completions",
            "invalid completions request: prompt is an empty list",
        ),
        ({"model": "m", "prompt": [1, "a"]}, "/v1/completions", "prompt must be a string"),
        ({"model": "m", "prompt": {"a": 1}}, "/v1/completions", "prompt must be a string"),
        ({"model": "m", "messages": "hi"}, "/v1/chat/completions", "must have valid messages field"),
        (
            {"model": "m", "messages": [{"content": "x"}]},
            "/v1/chat/completions",
            "messages[0] must be an object",
        ),
        (
            {"model": "m", "messages": [{"role": "u", "content": 5}]},
            "/v1/chat/completions",
            "content must be",
        ),
        (
            {"model": "m", "messages": [{"role": "u", "content": [1]}]},
            "/v1/chat/completions",
            "messages[0].content[0] must be an object",
        ),
        (
            {"model": "m", "messages": [{"role": "u", "content": [{"type": "text", "text": 5}]}]},
            "/v1/chat/completions",
            "messages[0].content[0].text must be a string",
        ),
        (
            {"model": "m", "messages": [{"role": "u", "content": [{"type": 1}]}]},
            "/v1/chat/completions",
            "messages[0].content[0].type must be a string",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "u", "content": ["x", {"type": "image_url", "image_url": "u"}]}],
            },
            "/v1/chat/completions",
            "messages[0].content[0] must be an object",
        ),
        (
            {"model": "m", "messages": [{"role": "u", "content": [{"type": "image_url", "image_url": 7}]}]},
            "/v1/chat/completions",
            "messages[0].content[0].image_url must be an object",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "u", "content": [{"type": "input_audio", "input_audio": {"data": 3}}]}],
            },
            "/v1/chat/completions",
            "messages[0].content[0].input_audio.data must be a string",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {"role": "u", "content": "x"},
                    {"role": "u", "content": [{"video_url": {"url": []}}]},
                ],
            },
            "/v1/chat/completions",
            "messages[1].content[0].video_url.url must be a string",
        ),
        ({"model": "m"}, "/v1/responses", "must have input field"),
        ({"model": "m", "input": 5}, "/v1/responses", "input must be a string or a list"),
        ({"model": "m", "input": []}, "/v1/embeddings", "must have input field"),
        ({"model": "m", "input": {}}, "/v1/embeddings", "input must be a string, a list of strings"),
        ({"model": "m", "input": ["a", 3]}, "/v1/embeddings", "input must be a string, a list of strings"),
        ({"model": "m", "input": [[1], []]}, "/v1/embeddings", "input must be a string, a list of strings"),
        ({"model": "m", "items": []}, "/v1/conversations", "must have items field"),
        ({"model": "m", "prompt": "x", "max_tokens": -1}, "/v1/completions", "max_tokens must be"),
        ({"model": "m", "prompt": "x", "max_tokens": True}, "/v1/completions", "max_tokens must be"),
        ({"model": "m", "prompt": "x", "max_tokens": 2.5}, "/v1/completions", "max_tokens must be"),
        ({"model": "m", "prompt": "x", "max_tokens": -3.0}, "/v1/completions", "max_tokens must be"),
        ({"model": "m", "prompt": "x", "max_tokens": "5"}, "/v1/completions", "max_tokens must be"),
        ({"model": "m", "prompt": "x", "cache_salt": 3}, "/v1/completions", "cache_salt must be"),
        ({"model": "", "prompt": "x"}, "/v1/completions", "model not found"),
    ],
)
def test_invalid_bodies_are_400_with_a_clear_message(body: object, path: str, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse(body, path)
    assert caught.value.status == 400
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": "m", "prompt": "caf\xe9"}', "the body is not valid UTF-8 (byte 29)"),
        (b'{"model": "m", "prompt": "\xed\xa0\x80"}', "the body is not valid UTF-8 (byte 26)"),
        (
            gzip.compress(b'{"model": "m", "prompt": "x"}'),
            "the body is gzip-compressed; send it uncompressed",
        ),
    ],
)
def test_a_body_that_is_not_utf8_is_a_400_saying_where(raw: bytes, message: str) -> None:
    """orjson's message for these ('str is not valid UTF-8: surrogates not allowed: line 1 column 1
    (char 0)') pointed at the first byte and named surrogates whatever the fault."""
    with pytest.raises(RequestError) as caught:
        parse_request(raw, "/v1/completions", {}, "r")
    assert caught.value.status == 400
    assert caught.value.message.startswith(f"error unmarshaling request body: {message}")


def test_error_body_is_openai_shaped_json() -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(b"{", "/v1/completions", {}, "r")
    error = orjson.loads(caught.value.body())["error"]
    assert error["type"] == "BadRequest"
    assert error["code"] == 400
    assert error["message"].startswith("inference error: BadRequest - error unmarshaling request body")
    legacy = orjson.loads(caught.value.body("inference gateway"))["error"]["message"]
    assert legacy.startswith("inference gateway: BadRequest")


@pytest.mark.parametrize("field", range(len(DEEP_FIELDS)))
@pytest.mark.parametrize("depth", [255, 256, 600, 1024, 1025, 5000])
def test_bodies_nested_deeper_than_the_limit_are_a_400_naming_it(field: int, depth: int) -> None:
    path = DEEP_FIELDS[field][0]
    with pytest.raises(RequestError) as info:
        parse_request(deep_body(field, depth), path, {}, "rid")
    assert info.value.status == 400
    assert "nested deeper than the limit of 254 levels" in info.value.message


@pytest.mark.parametrize("field", range(len(DEEP_FIELDS)))
def test_a_body_at_the_depth_limit_parses(field: int) -> None:
    raw = deep_body(field, 254)
    assert raw.count(b"[") > 200
    request = parse_request(raw, DEEP_FIELDS[field][0], {}, "rid")
    assert request.prompt


@pytest.mark.parametrize("compiled", [True, False], ids=["C", "Python fallback"])
def test_the_depth_limit_with_and_without_the_extension(
    monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    """Both checks draw the line at the same level (the C one is `_jsondepth.c`, built at install)."""
    if compiled:
        pytest.importorskip("epp.requests._jsondepth")
    else:
        monkeypatch.setattr(jsontext, "_compiled_scan", None)
    for field in range(len(DEEP_FIELDS)):
        path = DEEP_FIELDS[field][0]
        assert parse_request(deep_body(field, 254), path, {}, "rid").prompt
        with pytest.raises(RequestError, match="nested deeper than the limit of 254 levels"):
            parse_request(deep_body(field, 255), path, {}, "rid")


def test_a_shallow_body_with_more_brackets_than_the_depth_limit_parses() -> None:
    """The depth is what is limited, not the number of objects and arrays."""
    messages = [{"role": "user", "content": [{"type": "text", "text": f"part {i}"}]} for i in range(300)]
    raw = orjson.dumps({"model": "m", "messages": messages})
    assert raw.count(b"[") + raw.count(b"{") > 254 * 3
    request = parse_request(raw, "/v1/chat/completions", {}, "rid")
    assert b"part 299" in request.prompt


def test_content_parts_with_null_or_absent_typed_fields_are_accepted() -> None:
    """GIE's and vLLM's parsers take null for a typed part field, and fields they do not type."""
    parts = [
        {"type": "text", "text": None},
        {"type": "image_url", "image_url": {"url": None, "detail": 3}},
        {"type": "input_audio", "input_audio": None},
        {"type": "text", "text": "hi", "extra": 1},
        {"image_url": "https://example.com/cat.png"},  # vLLM's bare-URL forms
        {"video_url": "https://example.com/cat.mp4"},
    ]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    request = parse_request(orjson.dumps(body), "/v1/chat/completions", {}, "rid")
    assert b'"extra":1' in request.prompt


def test_a_shallow_body_keeps_no_utf8_copy_of_its_strings() -> None:
    """The depth check does not write a shallow body: writing it would attach a UTF-8 copy to each
    non-ASCII string (CPython caches it in the str), held for as long as the body."""
    prompt = "héllo wörld " * 10_000
    raw = orjson.dumps({"model": "m", "prompt": prompt})
    fresh = orjson.loads(raw)["prompt"]
    body = decode_body(raw)
    assert sys.getsizeof(body["prompt"]) == sys.getsizeof(fresh)
