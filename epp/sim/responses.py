"""Complete (non-streamed) JSON responses of the simulated server, in vLLM's shapes."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from epp.requests.jsontext import dumps
from epp.sim.config import LoraModule
from epp.sim.logprobs import choice_logprobs
from epp.sim.openai_api import (
    ApiError,
    Choice,
    Generation,
    chat_body,
    completion_body,
    embedding_vector,
    responses_body,
)
from epp.sim.sequences import OutputSequence, SequenceGroup
from epp.sim.tools import message_tool_calls


def json_response(body: dict[str, Any] | list[Any], status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json")


def error_response(error: ApiError) -> web.Response:
    return json_response(error.body(), status=error.status)


def generation_body(gen: Generation, group: SequenceGroup, kv: dict[str, Any] | None) -> dict[str, Any]:
    """The finished ``group`` as ``gen``'s API answers it; ``kv``: a prefill leg's transfer params."""
    created = int(time.time())
    choices = [_choice(gen, s) for s in group.sequences]
    use = group.usage()
    if gen.kind == "chat":
        return chat_body(f"chatcmpl-{uuid.uuid4().hex}", created, gen.model, choices, use, kv)
    if gen.conversation is not None:
        first = choices[0]
        return responses_body(
            gen.conversation.response_id, created, gen.model, first.text, first.finish_reason, use, kv
        )
    return completion_body(f"cmpl-{uuid.uuid4().hex}", created, gen.model, choices, use, kv)


def _choice(gen: Generation, seq: OutputSequence) -> Choice:
    """One finished sequence; a forced tool call as vLLM's message: no content, the call."""
    reason = seq.request.finish_reason
    logprobs = choice_logprobs(gen.kind, seq.seed, 0, seq.request.output_done, gen.logprobs, 0, seq.pieces)
    if seq.call is None:
        return Choice(seq.index, seq.text(), reason, logprobs)
    calls = message_tool_calls(seq.call, len(seq.text()))
    return Choice(seq.index, "", seq.call.finish_reason(reason), logprobs, calls)


def _embedding(token_ids: list[int], dimensions: int, base64_format: bool) -> list[float] | str:
    """A vector as floats, or for `encoding_format: base64` as vLLM writes it: the base64 of its
    little-endian float32s."""
    vector = embedding_vector(token_ids, dimensions)
    if not base64_format:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_body(
    model: str, prompts: list[list[int]], dimensions: int, base64_format: bool = False
) -> dict[str, Any]:
    total = sum(len(p) for p in prompts)
    return {
        "id": f"embd-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": _embedding(p, dimensions, base64_format)}
            for i, p in enumerate(prompts)
        ],
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


def models_body(model: str, loras: Iterable[LoraModule], created: int, max_len: int) -> dict[str, Any]:
    """``/v1/models``: the served model, then its LoRA adapters."""
    cards = [_model_card(model, created, model, None, max_len)]
    cards.extend(
        _model_card(m.name, created, m.path or m.name, m.base_model_name or model, max_len) for m in loras
    )
    return {"object": "list", "data": cards}


def _model_card(model_id: str, created: int, root: str, parent: str | None, max_len: int) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_len,
        "permission": [],
    }
