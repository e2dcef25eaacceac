"""Streamed generation responses: server-sent events, one frame per token as the engine produces
it, framed as vLLM frames each API's stream."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from aiohttp import web

from epp.requests.jsontext import dumps
from epp.sim.engine import State
from epp.sim.logprobs import choice_logprobs
from epp.sim.openai_api import (
    ApiError,
    Choice,
    Generation,
    chat_chunk,
    completion_chunk,
    message_id,
    queued_responses_body,
    responses_body,
    usage_chunk,
)
from epp.sim.sequences import OutputSequence, SequenceGroup
from epp.sim.tools import tool_call_id


async def stream_response(http: web.Request, gen: Generation, group: SequenceGroup) -> web.StreamResponse:
    """Send ``group``'s tokens as they come, then the closing frames once every sequence is done.
    A client that goes away ends the stream quietly: the caller aborts what is left."""
    response = await _open(http)
    with contextlib.suppress(ConnectionResetError):
        await _send(response, SseWriter(gen, group), group)
    return response


async def _open(http: web.Request) -> web.StreamResponse:
    """The 200 and the event-stream headers, sent."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(http)
    return response


async def stream_error(http: web.Request, error: ApiError) -> web.StreamResponse:
    """A stream that fails before its first token, as vLLM's does: the 200 and the event-stream
    headers are already out, so the error comes as a data frame, then `[DONE]`."""
    response = await _open(http)
    with contextlib.suppress(ConnectionResetError):
        await response.write(_data(error.body()) + b"data: [DONE]\n\n")
        await response.write_eof()
    return response


async def _send(response: web.StreamResponse, writer: SseWriter, group: SequenceGroup) -> None:
    # vLLM sends a chat stream's role frame with the first output, so the body's first bytes come
    # with the first token (what an EPP reading the chunks takes as the end of the prefill).
    opening = writer.opening()
    if not writer.opens_with_first_output:
        await response.write(opening)
        opening = b""
    while True:
        # Clear before reading, so a step that ends during the write below sets the event again;
        # the group may have finished before the stream started (a slow KV pull), so the tokens
        # are drained before the state is waited on.
        group.event.clear()
        finished = group.finished()
        frames = writer.new_tokens()
        if frames:
            await response.write(opening + frames)
            opening = b""
        if finished:
            break
        await group.event.wait()
    await response.write(opening + writer.closing())
    await response.write_eof()


class SseWriter:
    """Builds the server-sent-event frames of one streamed response: one frame per token."""

    def __init__(self, gen: Generation, group: SequenceGroup) -> None:
        self._gen = gen
        self._group = group
        self._created = int(time.time())
        self._offsets: dict[int, int] = {}  # per choice: the text sent so far (completions' text_offset)
        self._written: dict[int, int] = {}  # per choice with a forced tool call: its text sent so far
        self._called: set[int] = set()  # the choices whose tool call has opened (id and name sent)
        if gen.conversation is not None:
            self._id = gen.conversation.response_id
        else:
            self._id = ("chatcmpl-" if gen.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self._sequence = 0  # the Responses API's sequence_number of the next event
        self._message_open = False  # the Responses API's message item and its text part are open

    @property
    def opens_with_first_output(self) -> bool:
        """Whether the opening frames wait for the first output (chat's role frame, as vLLM's)."""
        return self._gen.kind == "chat"

    def opening(self) -> bytes:
        gen = self._gen
        if gen.kind == "chat":
            return b"".join(
                self._frame(
                    s,
                    0,
                    chat_chunk(self._id, self._created, gen.model, Choice(s.index, "", None), first=True),
                )
                for s in self._group.sequences
            )
        if gen.kind == "responses":
            snapshot = queued_responses_body(self._id, self._created, gen.model, "in_progress")
            return self._numbered("response.created", {"response": snapshot}) + self._numbered(
                "response.in_progress", {"response": snapshot}
            )
        return b""

    def new_tokens(self) -> bytes:
        """Frames for the tokens generated since the last call."""
        gen = self._gen
        frames: list[bytes] = []
        for seq in self._group.sequences:
            request = seq.request
            while seq.sent < request.output_done:
                index = seq.sent
                text = seq.token_text(index)
                seq.sent += 1
                last = seq.sent == request.output_done and request.state is State.DONE
                logprobs = None
                if gen.logprobs is not None:
                    offset = self._offsets.get(seq.index, 0)
                    self._offsets[seq.index] = offset + len(text)
                    logprobs = choice_logprobs(
                        gen.kind, seq.seed, index, index + 1, gen.logprobs, offset, seq.pieces
                    )
                choice = Choice(seq.index, text, request.finish_reason if last else None, logprobs)
                if gen.kind == "chat" and seq.call is not None:
                    frames.extend(self._tool_call_frame(seq, choice))
                elif gen.kind == "chat":
                    frames.append(
                        self._frame(seq, seq.sent, chat_chunk(self._id, self._created, gen.model, choice))
                    )
                elif gen.kind == "responses":
                    if not self._message_open:
                        frames.append(self._open_message())
                    delta = {**self._text_part(), "delta": text, "logprobs": []}
                    frames.append(self._numbered("response.output_text.delta", delta))
                else:
                    chunk = completion_chunk(self._id, self._created, gen.model, choice)
                    frames.append(self._frame(seq, seq.sent, chunk))
        return b"".join(frames)

    def _frame(self, seq: OutputSequence, completion_tokens: int, chunk: dict[str, Any]) -> bytes:
        """A chat or completions frame; with continuous usage stats, the choice's usage so far as
        vLLM adds it (its prompt, the tokens it has generated, no details)."""
        if self._gen.continuous_usage:
            prompt = seq.request.prompt_len
            chunk["usage"] = {
                "prompt_tokens": prompt,
                "total_tokens": prompt + completion_tokens,
                "completion_tokens": completion_tokens,
            }
        return _data(chunk)

    def _tool_call_frame(self, seq: OutputSequence, choice: Choice) -> list[bytes]:
        """A forced tool call's token as vLLM streams it: the arguments it adds, the first time
        with the call's id and name. A token that adds none (a `required` call's wrapper around
        them) sends no frame, unless it ends the choice or carries logprobs (then `delta: {}`)."""
        assert seq.call is not None
        start = self._written.get(seq.index, 0)
        self._written[seq.index] = start + len(choice.text)
        arguments = seq.call.arguments(start, start + len(choice.text))
        delta: dict[str, Any] = {}
        if arguments and seq.index in self._called:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}
        elif arguments:
            self._called.add(seq.index)
            call = {"name": seq.call.name, "arguments": arguments}
            delta = {"tool_calls": [{"id": tool_call_id(), "type": "function", "index": 0, "function": call}]}
        if not delta and choice.finish_reason is None and choice.logprobs is None:
            return []
        choice.finish_reason = seq.call.finish_reason(choice.finish_reason)
        return [
            self._frame(
                seq, seq.sent, chat_chunk(self._id, self._created, self._gen.model, choice, delta=delta)
            )
        ]

    def closing(self) -> bytes:
        gen = self._gen
        use = self._group.usage()
        if gen.kind == "responses":
            seq = self._group.sequences[0]
            body = responses_body(
                self._id, self._created, gen.model, seq.text(), seq.request.finish_reason, use, None
            )
            return self._close_message(body["output"][0]) + self._numbered(
                "response.completed", {"response": body}
            )
        tail = (
            _data(usage_chunk(self._id, self._created, gen.model, gen.kind, use))
            if gen.include_usage
            else b""
        )
        return tail + b"data: [DONE]\n\n"

    # The Responses API's events around the text, as vLLM streams them: the message item and its
    # text part are opened before the first delta and closed, whole, before `response.completed`.
    # The openai SDK's `responses.stream()` refuses a delta whose item was not opened first
    # ("Received a content event for output index 0 before receiving its output item").

    def _numbered(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return _event(kind, payload)

    def _text_part(self) -> dict[str, Any]:
        return {"item_id": message_id(self._id), "output_index": 0, "content_index": 0}

    def _open_message(self) -> bytes:
        self._message_open = True
        item = {"id": message_id(self._id), "type": "message", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return self._numbered(
            "response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress"}}
        ) + self._numbered("response.content_part.added", {**self._text_part(), "part": part})

    def _close_message(self, item: dict[str, Any]) -> bytes:
        if not self._message_open:
            return b""
        part = item["content"][0]
        return (
            self._numbered(
                "response.output_text.done", {**self._text_part(), "text": part["text"], "logprobs": []}
            )
            + self._numbered("response.content_part.done", {**self._text_part(), "part": part})
            + self._numbered("response.output_item.done", {"output_index": 0, "item": item})
        )


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\n" + _data(payload)
