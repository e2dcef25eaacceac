"""Log probabilities of generated tokens, in vLLM's shapes for chat completions
(`logprobs.content[]`) and completions (`text_offset`, `token_logprobs`, `tokens`,
`top_logprobs`). Deterministic: a position's values depend only on the sequence seed and the
token's index. The sampled token is the likeliest (as greedy decoding samples it), so vLLM's
per-position set, the sampled token then the top `count`, holds `count` distinct tokens (1 for
`count` 0), sampled first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from epp.sim.tokens import output_text


def position(
    seed: int, index: int, count: int, pieces: Sequence[str] | None = None
) -> list[tuple[str, float]]:
    """(token text, logprob) at generated token `index`: the sampled token (`pieces[index]` when
    the sequence's tokens are given, a forced tool call's), then alternatives in falling
    likelihood."""
    sampled = -((seed * 31 + index * 7) % 97 + 1) / 100  # in [-0.97, -0.01]
    spread = ((seed + index) % 25) / 100
    entries = [(output_text(seed, index) if pieces is None else pieces[index], sampled)]
    entries.extend(
        (output_text(seed, index, rank), round(sampled - 1.25 * rank - spread, 4)) for rank in range(1, count)
    )
    return entries


def _chat_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(
    seed: int, start: int, end: int, count: int, pieces: Sequence[str] | None = None
) -> dict[str, Any]:
    """`choices[].logprobs` of a chat completion for tokens `start`..`end` (exclusive); `count`:
    the request's `top_logprobs`."""
    content = []
    for index in range(start, end):
        entries = position(seed, index, count, pieces)
        token, logprob = entries[0]
        top = [_chat_entry(t, lp) for t, lp in entries[:count]]
        content.append({**_chat_entry(token, logprob), "top_logprobs": top})
    return {"content": content}


def completion_logprobs(seed: int, start: int, end: int, count: int, offset: int) -> dict[str, Any]:
    """`choices[].logprobs` of a completion for tokens `start`..`end`; `count`: the request's
    `logprobs`; `offset`: the text's length before token `start` (a stream's earlier chunks)."""
    result: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for index in range(start, end):
        entries = position(seed, index, count)
        token, logprob = entries[0]
        result["text_offset"].append(offset)
        result["token_logprobs"].append(logprob)
        result["tokens"].append(token)
        result["top_logprobs"].append(dict(entries[: count + 1]))
        offset += len(token)
    return result


def choice_logprobs(
    kind: str,
    seed: int,
    start: int,
    end: int,
    count: int | None,
    offset: int,
    pieces: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """A choice's `logprobs` for tokens `start`..`end` in `kind`'s API shape; None when the request
    asked for none (`count` None). `pieces`: a chat sequence's own tokens (a forced tool call)."""
    if count is None:
        return None
    if kind == "chat":
        return chat_logprobs(seed, start, end, count, pieces)
    return completion_logprobs(seed, start, end, count, offset)
