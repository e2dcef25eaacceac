"""Usage from final JSON bodies and from SSE streams, including lines split across chunks."""

from __future__ import annotations

import orjson

from epp.requests import Usage
from epp.requests.usage import UsageReader, usage_from_object


def test_chat_completion_json_usage() -> None:
    body = {
        "object": "chat.completion",
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "total_tokens": 14,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }
    reader = UsageReader(streaming=False)
    raw = orjson.dumps(body)
    reader.feed(raw[:7], False)
    reader.feed(raw[7:], True)
    assert reader.usage == Usage(prompt_tokens=10, completion_tokens=4, cached_tokens=8, total_tokens=14)


def test_responses_api_names() -> None:
    usage = usage_from_object(
        {"object": "response", "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}
    )
    assert usage == Usage(3, 2, 0, 5)
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 1, "output_tokens": 1}}}
    assert usage_from_object(completed) == Usage(1, 1, 0, 0)


def test_sse_usage_in_the_final_chunk_even_when_split_across_chunks() -> None:
    final = orjson.dumps(
        {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
    )
    stream = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: ' + final + b"\n\ndata: [DONE]\n\n"
    reader = UsageReader(streaming=True)
    for i in range(0, len(stream), 13):
        reader.feed(stream[i : i + 13], i + 13 >= len(stream))
    assert reader.usage == Usage(5, 2, 0, 7)


def test_no_usage_and_garbage_leave_usage_unset() -> None:
    reader = UsageReader(streaming=True)
    reader.feed(b'data: {"usage": broken\n\ndata: [DONE]\n\n', True)
    assert reader.usage is None
    json_reader = UsageReader(streaming=False)
    json_reader.feed(b"<html>bad gateway</html>", True)
    assert json_reader.usage is None


def test_sse_usage_found_wherever_the_chunks_cut_it() -> None:
    """Token chunks without usage take a shortcut; the usage line is found whatever byte the
    chunk boundaries fall on, the word "usage" itself included."""
    tokens = b"".join(b'data: {"choices":[{"text":" t%d"}]}\n\n' % i for i in range(5))
    final = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\ndata: [DONE]\n\n'
    stream = tokens + final
    for cut in range(1, len(stream)):
        for step in (cut, 7):
            reader = UsageReader(streaming=True)
            pieces = [stream[:cut], *(stream[i : i + step] for i in range(cut, len(stream), step))]
            for i, piece in enumerate(pieces):
                reader.feed(piece, i == len(pieces) - 1)
            assert reader.usage is not None and reader.usage.completion_tokens == 5, (cut, step)


def test_the_responses_api_response_id_comes_with_its_usage() -> None:
    """A JSON answer's id, a stream's from its closing `response.completed` event (split across
    chunks); a chat completion's id is not a Responses API response's."""
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    answer = UsageReader(streaming=False)
    answer.feed(orjson.dumps({"id": "resp_a", "object": "response", "usage": usage}), True)
    assert answer.response_id == "resp_a"
    stream = UsageReader(streaming=True)
    created = {"type": "response.created", "response": {"id": "resp_b", "status": "in_progress"}}
    completed = {
        "type": "response.completed",
        "response": {"id": "resp_b", "object": "response", "usage": usage},
    }
    events = b"event: response.created\ndata: " + orjson.dumps(created) + b"\n\n"
    events += b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n"
    stream.feed(events[:90], False)
    stream.feed(events[90:], True)
    assert stream.response_id == "resp_b" and stream.usage is not None and stream.usage.total_tokens == 5
    chat = UsageReader(streaming=False)
    chat.feed(orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "usage": usage}), True)
    assert chat.response_id is None


def test_a_background_responses_answer_has_its_id_before_any_usage() -> None:
    """vLLM's Responses API with `background: true` answers at once: the stored response, status
    `queued`, `usage` null. Its id is what a follow-up's `previous_response_id` will name."""
    queued = {"id": "resp_q", "object": "response", "status": "queued", "usage": None}
    reader = UsageReader(streaming=False)
    reader.feed(orjson.dumps(queued), True)
    assert reader.usage is None
    assert reader.response_id == "resp_q"
