"""`cached_tokens` rewriting on JSON replies and on SSE streams cut at any byte."""

from __future__ import annotations

import orjson
import pytest

from epp.sidecar.usage import SseRewriter, prefiller_cached_tokens, rewrite_json


def chat_reply(cached: int) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "cached_tokens are fun"}}],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 3,
            "total_tokens": 103,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def test_json_reply_gets_the_prefillers_figure() -> None:
    out = orjson.loads(rewrite_json(orjson.dumps(chat_reply(96)), 16))
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}
    assert out["usage"]["prompt_tokens"] == 100
    assert out["choices"][0]["message"]["content"] == "cached_tokens are fun"


def test_a_reply_with_integers_past_64_bits_keeps_them() -> None:
    """orjson read 10**20 as 1e+20 and wrote the rewritten reply with `1e20`."""
    reply = b'{"usage":{"prompt_tokens_details":{"cached_tokens":96}},"seed":100000000000000000000}'
    assert (
        rewrite_json(reply, 16)
        == b'{"usage":{"prompt_tokens_details":{"cached_tokens":16}},"seed":100000000000000000000}'
    )


def test_responses_api_usage_is_rewritten_too() -> None:
    reply = {
        "object": "response",
        "usage": {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 48}},
    }
    out = orjson.loads(rewrite_json(orjson.dumps(reply), 0))
    assert out["usage"]["input_tokens_details"]["cached_tokens"] == 0
    event = {"type": "response.completed", "response": reply}
    out = orjson.loads(rewrite_json(orjson.dumps(event), 7))
    assert out["response"]["usage"]["input_tokens_details"]["cached_tokens"] == 7


@pytest.mark.parametrize(
    "payload",
    [
        b'{"usage": {"prompt_tokens": 4, "prompt_tokens_details": null}, "x": "cached_tokens"}',
        b'{"usage": {"prompt_tokens": 4}}',
        b'{"usage": {"prompt_tokens_details": {"cached_tokens": 3}',
        b"not json at all",
    ],
)
def test_replies_without_the_figure_pass_byte_for_byte(payload: bytes) -> None:
    assert rewrite_json(payload, 99) == payload


def test_prefiller_figure_defaults_to_zero() -> None:
    assert prefiller_cached_tokens(chat_reply(32)) == 32
    assert prefiller_cached_tokens({"usage": {"input_tokens_details": {"cached_tokens": 5}}}) == 5
    assert prefiller_cached_tokens({"usage": {"prompt_tokens": 9}}) == 0
    assert prefiller_cached_tokens({"kv_transfer_params": {}}) == 0
    assert prefiller_cached_tokens([1, 2]) == 0


def sse_stream() -> bytes:
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None}
    final = {"id": "c", "choices": [], "usage": chat_reply(96)["usage"]}
    return (
        b"data: " + orjson.dumps(chunk) + b"\n\n"
        b": keep-alive comment\n\n"
        b"data:" + orjson.dumps(final) + b"\r\n\r\n"
        b"data: [DONE]\n\n"
    )


def expected_sse(cached: int) -> bytes:
    return sse_stream().replace(b'"cached_tokens":96', b'"cached_tokens":' + str(cached).encode())


def test_sse_stream_in_one_chunk() -> None:
    rewriter = SseRewriter(12)
    assert rewriter.feed(sse_stream()) + rewriter.flush() == expected_sse(12)


def test_sse_frames_split_at_every_byte_position() -> None:
    stream = sse_stream()
    for cut in range(1, len(stream)):
        rewriter = SseRewriter(12)
        out = rewriter.feed(stream[:cut]) + rewriter.feed(stream[cut:]) + rewriter.flush()
        assert out == expected_sse(12), f"split at {cut}"


def test_sse_byte_by_byte_emits_each_line_as_soon_as_it_ends() -> None:
    stream = sse_stream()
    rewriter = SseRewriter(12)
    emitted = []
    for i in range(len(stream)):
        out = rewriter.feed(stream[i : i + 1])
        if out:
            emitted.append(out)
            assert out.endswith(b"\n"), "only complete lines are released"
    assert b"".join(emitted) + rewriter.flush() == expected_sse(12)
    first_line_end = stream.index(b"\n") + 1
    assert emitted[0] == stream[:first_line_end], "the first token line is not held back"


def test_sse_unterminated_last_line_is_rewritten_on_flush() -> None:
    rewriter = SseRewriter(1)
    assert rewriter.feed(b'data: {"usage": {"prompt_tokens_details": {"cached_tokens": 9}}}') == b""
    assert rewriter.flush() == b'data: {"usage":{"prompt_tokens_details":{"cached_tokens":1}}}'
    assert rewriter.flush() == b""
