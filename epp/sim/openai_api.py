"""OpenAI/vLLM request parsing and response shapes for the simulator (no I/O here).

Requests become ``Generation`` values holding token ids, so the HTTP layer never deals with the
many prompt encodings; responses are plain dicts in the exact shape vLLM returns.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import xxhash

from epp.sim.errors import ApiError
from epp.sim.lax import lax_bool, lax_int
from epp.sim.sampling import check_prompt_vocabulary, check_sampling
from epp.sim.tokens import VOCAB_SIZE, render_chat, tokenize
from epp.sim.tools import ForcedTools, parse_tool_choice

Kind = Literal["completion", "chat", "responses"]
Turn = tuple[str, str]
"""One message of a conversation: (role, text)."""

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) default ``max_tokens`` for legacy completions."""
EMBEDDING_DIMENSIONS = 256


@dataclass(slots=True)
class Generation:
    """A parsed text-generation request: one token-id prompt per choice."""

    kind: Kind
    model: str
    prompts: list[list[int]]
    max_tokens: int | None
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    kv_transfer_params: Any
    # vLLM's `stream_options.continuous_usage_stats` (with `include_usage`): every frame carries
    # its choice's usage so far.
    continuous_usage: bool = False
    n: int = 1  # choices per prompt
    priority: int = 0  # vLLM's per-request priority (lower first under --scheduling-policy priority)
    cache_salt: str | None = None  # vLLM's `cache_salt`: hashed into the prompt's first KV block
    conversation: Conversation | None = None  # Responses API requests only
    # Alternatives per generated token the answer shows (vLLM's SamplingParams.logprobs: chat's
    # `top_logprobs` when `logprobs` is true, completions' `logprobs`); None: no logprobs.
    logprobs: int | None = None
    tools: ForcedTools | None = None  # chat's forced tool choice (a named function, "required")


@dataclass(slots=True)
class Conversation:
    """What a Responses API request adds to a conversation, and where it continues one."""

    response_id: str  # the id its response will have (vLLM's `request_id` field, or a new one)
    instructions: str | None
    input: list[Turn]
    previous_response_id: str | None
    store: bool  # keep the response for a follow-up naming it
    background: bool = False  # answer `queued` at once; the response is polled by its id
    history: list[Turn] = field(default_factory=list)  # the previous response's conversation

    def turns(self) -> list[Turn]:
        """The messages rendered into the prompt, in vLLM's order: this request's instructions,
        the stored conversation (its messages and output), then this request's input."""
        system = [("system", self.instructions)] if self.instructions is not None else []
        return [*system, *self.history, *self.input]

    def stored(self, output: str) -> list[Turn]:
        """The conversation a follow-up continues: without system messages (instructions do not
        carry over, as in vLLM and OpenAI's API), with this response's output."""
        return [t for t in self.turns() if t[0] != "system"] + [("assistant", output)]


# vLLM's fields the simulator does not produce: `echo` (the prompt, or chat's last message, before
# the answer) and `prompt_logprobs`. Refused rather than answered without them.


def _refuse_unsimulated(body: dict[str, Any], echo_nullable: bool) -> None:
    """`echo` is a boolean (completions: or null); `prompt_logprobs` an integer or null, any
    number passing vLLM's check of its JSON type."""
    if _optional_bool(body, "echo", nullable=echo_nullable):
        raise ApiError(400, "'echo' is not simulated: send it as false", "echo")
    if _logprobs_number(body, "prompt_logprobs") is not None:
        raise ApiError(400, "'prompt_logprobs' is not simulated: send it as null", "prompt_logprobs")


def _logprobs_number(body: dict[str, Any], field: str) -> int | float | None:
    """A logprobs count as vLLM's model validator checks it before pydantic reads it: a JSON
    number (or a boolean, which Python counts as one); anything else is its 400."""
    value = body.get(field)
    if value is not None and not isinstance(value, int | float):
        raise ApiError(400, f"`{field}` must be an integer.", field)
    return value


def parse_completion(body: dict[str, Any]) -> Generation:
    _refuse_unsimulated(body, echo_nullable=True)
    prompt = body.get("prompt")
    # vLLM's own words: its request model's check, then its prompt parser's.
    if prompt is None or prompt == "":
        raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    if prompt == []:
        raise ApiError(400, "please provide at least one prompt")
    gen = _generation(
        "completion", body, _prompts(prompt, "prompt"), "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS
    )
    count = _logprobs_number(body, "logprobs")
    if count is not None and count < 0 and count != -1:
        raise ApiError(400, "`logprobs` must be a positive value or -1.", "logprobs")
    gen.logprobs = _whole_vocabulary(_optional_int(body, "logprobs", minimum=None))
    _check_sampling(gen, body)
    check_prompt_vocabulary(gen.prompts)
    return gen


def parse_chat(body: dict[str, Any]) -> Generation:
    _refuse_unsimulated(body, echo_nullable=False)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    turns = [(_role(m), _content(m.get("content"), "messages")) for m in messages]
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    gen = _generation("chat", body, [tokenize(render_chat(turns))], field, None)
    wanted = _optional_bool(body, "logprobs")
    top = _logprobs_number(body, "top_logprobs")
    if top is not None and top < 0 and top != -1:
        raise ApiError(400, "`top_logprobs` must be a positive value or -1.", "top_logprobs")
    # vLLM checks the JSON value here, before pydantic reads it: "false" (a non-empty string)
    # passes, and is then read as false (no logprobs).
    if top is not None and (top == -1 or top > 0) and not body.get("logprobs"):
        raise ApiError(400, "when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
    count = _optional_int(body, "top_logprobs", minimum=None)
    gen.logprobs = _whole_vocabulary(count or 0) if wanted else None
    gen.tools = parse_tool_choice(body)
    _check_sampling(gen, body)
    return gen


def _check_sampling(gen: Generation, body: dict[str, Any]) -> None:
    """vLLM's SamplingParams checks, after the request model's own (the parse above)."""
    check_sampling(body, gen.kind == "responses", gen.n, gen.max_tokens, gen.min_tokens)


def _whole_vocabulary(count: int | None) -> int | None:
    """vLLM's -1: as many alternatives as the vocabulary has (beyond any `--max-logprobs`)."""
    return VOCAB_SIZE if count == -1 else count


def parse_responses(body: dict[str, Any]) -> Generation:
    raw = body.get("input")
    turns: list[Turn] = []
    if isinstance(raw, str):
        turns.append(("user", raw))
    elif isinstance(raw, list) and raw:
        turns.extend((_role(item), _content(item.get("content"), "input")) for item in raw)
    else:
        raise ApiError(400, "'input' must be a string or a non-empty list of messages", "input")
    store = _optional_bool(body, "store", default=True)
    background = _optional_bool(body, "background", default=False)
    if background and not store:
        raise ApiError(400, "background can only be used when `store` is true", "background")
    if background and _optional_bool(body, "stream"):
        raise ApiError(
            400,
            "epp sim does not simulate streamed background responses (background with stream); "
            "send one of them",
            "stream",
        )
    conversation = Conversation(
        response_id=_optional_str(body, "request_id") or f"resp_{uuid.uuid4().hex}",
        instructions=body["instructions"] if isinstance(body.get("instructions"), str) else None,
        input=turns,
        previous_response_id=_optional_str(body, "previous_response_id"),
        store=bool(store),
        background=bool(background),
    )
    gen = _generation(
        "responses", body, [tokenize(render_chat(conversation.turns()))], "max_output_tokens", None
    )
    gen.conversation = conversation
    _check_sampling(gen, body)
    return gen


def continue_conversation(gen: Generation, history: list[Turn]) -> None:
    """Prepend a stored conversation to a Responses API request (its `previous_response_id`)."""
    assert gen.conversation is not None
    gen.conversation.history = history
    gen.prompts = [tokenize(render_chat(gen.conversation.turns()))]


def parse_embedding_input(body: dict[str, Any]) -> list[list[int]]:
    raw = body.get("input")
    if raw is None:
        raise ApiError(400, "'input' is required", "input")
    prompts = _prompts(raw, "input")
    check_prompt_vocabulary(prompts)
    return prompts


def _generation(
    kind: Kind, body: dict[str, Any], prompts: list[list[int]], limit_field: str, default_limit: int | None
) -> Generation:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required", "model")
    _int64(body, "seed")  # the simulator draws nothing from it
    max_tokens = _optional_int(body, limit_field, minimum=None)
    stream = bool(_optional_bool(body, "stream", default=False))
    # vLLM's Responses API has no stream_options
    include_usage, continuous_usage = _include_usage(body) if kind != "responses" else (False, False)
    return Generation(
        kind=kind,
        model=model,
        prompts=prompts,
        max_tokens=default_limit if max_tokens is None else max_tokens,
        # vLLM's Responses API does not read `min_tokens`
        min_tokens=0 if kind == "responses" else _optional_int(body, "min_tokens", None, nullable=False) or 0,
        ignore_eos=bool(_optional_bool(body, "ignore_eos", default=False, nullable=False)),
        stream=stream,
        include_usage=stream and include_usage,
        continuous_usage=stream and continuous_usage,
        kv_transfer_params=body.get("kv_transfer_params"),
        # vLLM: chat's `n` may be null, completions' not.
        n=1 if kind == "responses" else _int_or(_optional_int(body, "n", None, nullable=kind == "chat"), 1),
        priority=_int64(body, "priority", nullable=False) or 0,
        cache_salt=_cache_salt(body),
    )


def _int_or(value: int | None, default: int) -> int:
    """`value`, or `default` where vLLM fills in one for an absent (or null) field: unlike
    `value or default`, keeps a 0 for vLLM's range check to refuse."""
    return default if value is None else value


_INT64_BOUND = 2**63
"""vLLM bounds `seed` and `priority` (chat, completions, responses) to -2**63 .. 2**63 - 1."""


def _int64(body: dict[str, Any], field: str, nullable: bool = True) -> int | None:
    """A lax integer field vLLM bounds to 64 bits (pydantic's ge/le), else its 400. The refused
    value is named as received, so a client sees whether its integer arrived whole."""
    value = _optional_int(body, field, minimum=None, nullable=nullable)
    if value is not None and not -_INT64_BOUND <= value < _INT64_BOUND:
        raise ApiError(
            400, f"'{field}' must be between -2**63 and 2**63 - 1 (a 64-bit integer), got {value}", field
        )
    return value


def _cache_salt(body: dict[str, Any]) -> str | None:
    """`cache_salt` as vLLM's request validator takes it: absent or null, or a non-empty string."""
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise ApiError(400, "Parameter 'cache_salt' must be a non-empty string if provided.", "cache_salt")
    return salt


def _include_usage(body: dict[str, Any]) -> tuple[bool, bool]:
    """`stream_options.include_usage` and `.continuous_usage_stats` as vLLM reads them: an object
    whose fields are lax booleans, `include_usage` true and `continuous_usage_stats` false when left
    out (null: false); the running usage only with the usage. vLLM's own check comes first, on the
    JSON values: non-empty options beside a `stream` that is not truthy JSON are its 400
    (`"stream": "false"` passes it, and then does not stream)."""
    options = body.get("stream_options")
    if options and not body.get("stream"):
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    if options is None:
        return False, False
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    include_usage = _option(options, "include_usage", True)
    return include_usage, include_usage and _option(options, "continuous_usage_stats", False)


def _option(options: dict[str, Any], field: str, default: bool) -> bool:
    value = options.get(field, default)
    read = None if value is None else lax_bool(value)
    if value is not None and read is None:
        raise ApiError(400, f"'stream_options.{field}' must be a boolean", "stream_options")
    return bool(read)


def _optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"'{field}' must be a string", field)
    return value


def _optional_int(body: dict[str, Any], field: str, minimum: int | None, nullable: bool = True) -> int | None:
    """An integer field as vLLM's lax pydantic ints take it (`512.0`, "512", `true`: `lax_int`);
    None when absent, or null where vLLM's field is optional (else null is its 400)."""
    if field not in body or (body[field] is None and nullable):
        return None
    value = lax_int(body[field])
    if value is None or (minimum is not None and value < minimum):
        raise ApiError(
            400, f"'{field}' must be an integer" + (f" >= {minimum}" if minimum is not None else ""), field
        )
    return value


def _optional_bool(
    body: dict[str, Any], field: str, default: bool | None = None, nullable: bool = True
) -> bool | None:
    """A boolean field as vLLM's lax pydantic booleans take it (0 and 1, "yes", "off": `lax_bool`);
    `default` when absent, None when null where vLLM's field is optional (else null is its 400)."""
    if field not in body:
        return default
    if body[field] is None and nullable:
        return None
    value = lax_bool(body[field])
    if value is None:
        raise ApiError(400, f"'{field}' must be a boolean", field)
    return value


def _prompts(raw: Any, field: str) -> list[list[int]]:
    """string | [string] | [int] | [[int]] -> token-id prompts."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        items = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise ApiError(400, f"'{field}' must be a string, a list of strings or a list of token ids", field)
    prompts: list[list[int]] = []
    for item in items:
        if isinstance(item, str):
            ids = tokenize(item)
        elif isinstance(item, list) and all(_is_token(t) for t in item):
            ids = list(item)
        else:
            raise ApiError(400, f"'{field}' items must be strings or lists of token ids", field)
        if not ids:
            raise ApiError(400, f"'{field}' must not be empty", field)
        prompts.append(ids)
    return prompts


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


def _role(message: Any) -> str:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(400, "every message needs a string 'role'", "messages")
    return str(message["role"])


def _content(content: Any, field: str) -> str:
    """String content, or the text parts of a content-part list (other parts carry no text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise ApiError(400, "content parts must be objects", field)
            if "text" in part:
                if not isinstance(part["text"], str):
                    raise ApiError(400, "a content part's 'text' must be a string", field)
                texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, "message content must be a string or a list of content parts", field)


# ----- responses ------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass(slots=True)
class Choice:
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # chat's `message.tool_calls`


def _envelope(
    rid: str,
    obj: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_: dict[str, Any],
    kv: Any,
) -> dict[str, Any]:
    """The fields completions and chat completions share; `kv_transfer_params` only on P/D legs."""
    body: dict[str, Any] = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_,
    }
    if kv is not None:
        body["kv_transfer_params"] = kv
    return body


def completion_body(
    rid: str, created: int, model: str, choices: list[Choice], usage_: dict[str, Any], kv: Any
) -> dict[str, Any]:
    rendered = [
        {
            "index": c.index,
            "text": c.text,
            "logprobs": c.logprobs,
            "finish_reason": c.finish_reason,
            "stop_reason": None,
        }
        for c in choices
    ]
    return _envelope(rid, "text_completion", created, model, rendered, usage_, kv)


def chat_body(
    rid: str, created: int, model: str, choices: list[Choice], usage_: dict[str, Any], kv: Any
) -> dict[str, Any]:
    rendered = [
        {
            "index": c.index,
            "message": {"role": "assistant", "content": c.text, "tool_calls": c.tool_calls},
            "logprobs": c.logprobs,
            "finish_reason": c.finish_reason,
            "stop_reason": None,
        }
        for c in choices
    ]
    return _envelope(rid, "chat.completion", created, model, rendered, usage_, kv)


def responses_body(
    rid: str, created: int, model: str, text: str, finish_reason: str | None, usage_: dict[str, Any], kv: Any
) -> dict[str, Any]:
    complete = finish_reason != "length"
    body: dict[str, Any] = {
        "id": rid,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": "completed" if complete else "incomplete",
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "output": [
            {
                "type": "message",
                "id": message_id(rid),
                "status": "completed" if complete else "incomplete",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": usage_["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": usage_["prompt_tokens_details"]["cached_tokens"]},
            "output_tokens": usage_["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage_["total_tokens"],
        },
    }
    if kv is not None:
        body["kv_transfer_params"] = kv
    return body


def message_id(rid: str) -> str:
    """The id of a response's message (its one output item)."""
    return "msg_" + rid.removeprefix("resp_")


def queued_responses_body(rid: str, created: int, model: str, status: str = "queued") -> dict[str, Any]:
    """A response with no output yet: a background one as vLLM answers its creation (queued), a
    streamed one as its first events carry it (in_progress)."""
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": status,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }


def completion_chunk(rid: str, created: int, model: str, choice: Choice) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": choice.index,
                "text": choice.text,
                "logprobs": choice.logprobs,
                "finish_reason": choice.finish_reason,
                "stop_reason": None,
            }
        ],
    }


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    choice: Choice,
    first: bool = False,
    delta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A chat stream's frame: the role frame (`first`), a text frame, or the given `delta`."""
    if delta is None:
        delta = {"role": "assistant", "content": ""} if first else {"content": choice.text}
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": choice.index,
                "delta": delta,
                "logprobs": None if first else choice.logprobs,
                "finish_reason": choice.finish_reason,
            }
        ],
    }


def usage_chunk(rid: str, created: int, model: str, kind: Kind, usage_: dict[str, Any]) -> dict[str, Any]:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage_}


def render_body(gen: Generation, prompt: list[int], request_id: str) -> dict[str, Any]:
    """One prompt as vLLM's render API answers it: the `GenerateRequest` the server would run
    (token ids after the chat template, sampling parameters, model)."""
    return {
        "request_id": request_id,
        "token_ids": prompt,
        "features": None,
        "sampling_params": {"max_tokens": gen.max_tokens, "min_tokens": gen.min_tokens, "n": gen.n},
        "model": gen.model,
        "stream": False,
        "stream_options": None,
        "cache_salt": gen.cache_salt,
        "priority": 0,
        "kv_transfer_params": gen.kv_transfer_params,
    }


def tokenize_body(token_ids: list[int], max_model_len: int) -> dict[str, Any]:
    """vLLM's `/tokenize` answer."""
    return {"count": len(token_ids), "max_model_len": max_model_len, "tokens": token_ids, "token_strs": None}


def embedding_vector(token_ids: list[int], dimensions: int) -> list[float]:
    """A unit vector that depends only on the token ids (same input, same embedding)."""
    seed = xxhash.xxh3_64_intdigest(repr(token_ids).encode())
    raw = [xxhash.xxh3_64_intdigest(i.to_bytes(4, "little"), seed) / 2**63 - 1.0 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


NATURAL_MAX_TOKENS = 512
"""Without ``ignore_eos`` a sequence "hits EOS" after 1..512 tokens (uniform, from its seed)."""


def output_length(limit: int, seed: int, ignore_eos: bool, min_tokens: int) -> tuple[int, str]:
    """How many tokens a sequence generates and its finish reason. ``ignore_eos``: exactly
    ``limit`` ("length"). Otherwise a natural length drawn deterministically from ``seed``
    (at least ``min_tokens``); "stop" if it ends before ``limit``, else cut at ``limit``."""
    if ignore_eos:
        return limit, "length"
    natural = max(1 + seed % NATURAL_MAX_TOKENS, min_tokens)
    return (natural, "stop") if natural < limit else (limit, "length")
