"""vLLM's checks of a generation request's sampling parameters, with its status and words.

vLLM builds a ``SamplingParams`` from each chat, completions and Responses API request and
refuses values its sampler cannot use (``SamplingParams._verify_args``, then ``verify`` against
the model's vocabulary), then its input processor refuses prompt token ids beyond the vocabulary.
Each refusal is a ``VLLMValidationError``, which its OpenAI layer answers as a 400
``BadRequestError`` whose message is the error's text with ``(parameter=..., value=...)`` appended
where the error names them, and whose ``param`` is that parameter. The simulator never samples,
but a client tested against it must meet the same refusals, in the same order: the first failing
check is the one answered. Rules and wording as of vLLM commit
00388f6573ccfcffad607b8c9ecdf341a4669ceb (``vllm/sampling_params.py``).

Only the fields each endpoint hands to ``SamplingParams`` are checked there: the Responses API
passes ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``logit_bias``, ``stop``
and its ``max_output_tokens`` (no penalties besides repetition, no ``min_p``, ``n``,
``min_tokens``, ``stop_token_ids`` or ``allowed_token_ids``: vLLM ignores them there).
Null is absent, as pydantic reads vLLM's optional fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from epp.sim.errors import ApiError
from epp.sim.lax import lax_float, lax_int
from epp.sim.tokens import VOCAB_SIZE

Number = TypeVar("Number", int, float)

SAMPLING_EPS = 1e-5
"""vLLM's `_SAMPLING_EPS`: a temperature below it is greedy sampling."""
MAX_TEMP = 1e-2
"""vLLM's `_MAX_TEMP`: a temperature above 0 but below it is raised to it before any check, so
`temperature: 1e-6` with `n: 2` samples (at 0.01) rather than being greedy and refused."""


def refusal(message: str, parameter: str | None = None, value: Any = None) -> ApiError:
    """A ``VLLMValidationError`` as vLLM's OpenAI layer answers it: 400, the message with the
    parameter and value it names appended, ``param`` the parameter."""
    extras = [f"parameter={parameter}"] if parameter is not None else []
    if value is not None:
        extras.append(f"value={value}")
    return ApiError(400, f"{message} ({', '.join(extras)})" if extras else message, parameter)


@dataclass(slots=True)
class Sampling:
    """The request's sampling fields as vLLM's ``SamplingParams`` holds them (defaults filled)."""

    n: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_tokens: int | None
    min_tokens: int
    stop: list[str]
    stop_token_ids: list[int]
    logit_bias: dict[int, float] | None
    allowed_token_ids: list[int] | None


def check_sampling(
    body: dict[str, Any], responses: bool, n: int, max_tokens: int | None, min_tokens: int
) -> None:
    """Refuse what vLLM's ``SamplingParams`` refuses for this request (`n`, `max_tokens` and
    `min_tokens` as the caller read them), in vLLM's order; `responses`: a Responses API one."""
    chat_like = not responses
    logit_bias = _logit_bias(body)  # converted before SamplingParams is built
    sampling = Sampling(
        n=n,
        presence_penalty=_float(body, "presence_penalty", 0.0) if chat_like else 0.0,
        frequency_penalty=_float(body, "frequency_penalty", 0.0) if chat_like else 0.0,
        repetition_penalty=_float(body, "repetition_penalty", 1.0),
        temperature=_raised(_float(body, "temperature", 1.0)),
        top_p=_float(body, "top_p", 1.0),
        top_k=_int(body, "top_k", 0),
        min_p=_float(body, "min_p", 0.0) if chat_like else 0.0,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        stop=_stop(body, responses),
        stop_token_ids=list(dict.fromkeys(_token_ids(body, "stop_token_ids") or [])) if chat_like else [],
        logit_bias=logit_bias,
        allowed_token_ids=_token_ids(body, "allowed_token_ids") if chat_like else None,
    )
    _verify_args(sampling)
    if sampling.temperature < SAMPLING_EPS and sampling.n > 1:
        raise refusal(f"n must be 1 when using greedy sampling, got {sampling.n}.")
    _verify_vocabulary(sampling)


def check_prompt_vocabulary(prompts: list[list[int]]) -> None:
    """vLLM's input processor: a prompt's largest token id must be in the vocabulary (one engine
    request per prompt, so the first prompt holding one is named)."""
    for prompt in prompts:
        largest = max(prompt, default=0)
        if largest > VOCAB_SIZE - 1:
            raise refusal(f"Token id {largest} is out of vocabulary")


def _verify_args(s: Sampling) -> None:
    """``SamplingParams._verify_args``, the checks the simulator's requests can reach (`n`'s upper
    bound is the server's --max-n-sequences check; negative logprobs are refused earlier)."""
    if s.n < 1:
        raise refusal(f"n must be at least 1, got {s.n}.")
    if not -2.0 <= s.presence_penalty <= 2.0:
        raise refusal(f"presence_penalty must be in [-2, 2], got {s.presence_penalty}.")
    if not -2.0 <= s.frequency_penalty <= 2.0:
        raise refusal(f"frequency_penalty must be in [-2, 2], got {s.frequency_penalty}.")
    if not math.isfinite(s.repetition_penalty):
        raise refusal(f"repetition_penalty must be a finite number, got {s.repetition_penalty}.")
    if s.repetition_penalty <= 0.0:
        raise refusal(f"repetition_penalty must be greater than zero, got {s.repetition_penalty}.")
    wrong = _temperature_wrong(s.temperature)
    if wrong is not None:
        raise refusal(f"temperature must be {wrong}, got {s.temperature}.", "temperature", s.temperature)
    if not 0.0 < s.top_p <= 1.0:
        raise refusal(f"top_p must be in (0, 1], got {s.top_p}.", "top_p", s.top_p)
    if s.top_k < -1:
        raise refusal(f"top_k must be 0 (disable), or at least 1, got {s.top_k}.")
    if not 0.0 <= s.min_p <= 1.0:
        raise refusal(f"min_p must be in [0, 1], got {s.min_p}.")
    if s.max_tokens is not None and s.max_tokens < 1:
        raise refusal(f"max_tokens must be at least 1, got {s.max_tokens}.", "max_tokens", s.max_tokens)
    if s.min_tokens < 0:
        raise refusal(f"min_tokens must be greater than or equal to 0, got {s.min_tokens}.")
    if s.max_tokens is not None and s.min_tokens > s.max_tokens:
        raise min_tokens_refusal(s.min_tokens, s.max_tokens)
    if any(not text for text in s.stop):
        raise refusal("stop cannot contain an empty string.")


def _temperature_wrong(temperature: float) -> str | None:
    """What vLLM says a temperature must be, where it is not: its checks, in its order."""
    if not math.isfinite(temperature):
        return "a finite number"
    if temperature < 0.0:
        return "non-negative"
    if temperature > 2.0:
        return "in [0, 2]"
    return None


def _raised(temperature: float) -> float:
    """``SamplingParams.__post_init__``'s first step: 0 < temperature < MAX_TEMP becomes MAX_TEMP."""
    return MAX_TEMP if 0.0 < temperature < MAX_TEMP else temperature


def min_tokens_refusal(min_tokens: int, max_tokens: int) -> ApiError:
    """vLLM's words for `min_tokens` above the (effective) `max_tokens`."""
    return refusal(f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.")


def _verify_vocabulary(s: Sampling) -> None:
    """``SamplingParams.verify``: token ids the sampler indexes its logits with must be in the
    vocabulary (the simulator's tokenizer's, which plays the model's)."""
    if s.logit_bias:
        _in_vocabulary(list(s.logit_bias), "logit_bias")
    if s.stop_token_ids:
        _in_vocabulary(s.stop_token_ids, "stop_token_ids")
    if s.allowed_token_ids is not None:
        if not s.allowed_token_ids:
            raise refusal("allowed_token_ids is not None and empty!", "allowed_token_ids", [])
        outside = _outside(s.allowed_token_ids)
        if outside:
            raise refusal("allowed_token_ids contains out-of-vocab token id!", "allowed_token_ids", outside)


def _in_vocabulary(token_ids: list[int], field: str) -> None:
    outside = _outside(token_ids)
    if outside:
        raise refusal(
            f"token_id(s) {outside} in {field} contain out-of-vocab token ids. Vocabulary size: {VOCAB_SIZE}",
            field,
            outside,
        )


def _outside(token_ids: list[int]) -> list[int]:
    return [t for t in token_ids if t < 0 or t >= VOCAB_SIZE]


def _float(body: dict[str, Any], field: str, default: float) -> float:
    return _lax(body, field, default, lax_float, "a number")


def _int(body: dict[str, Any], field: str, default: int) -> int:
    return _lax(body, field, default, lax_int, "an integer")


def _lax(
    body: dict[str, Any], field: str, default: Number, read: Callable[[object], Number | None], what: str
) -> Number:
    """A number field as pydantic's lax mode reads it (`read`); null or absent: vLLM's default."""
    if body.get(field) is None:
        return default
    value = read(body[field])
    if value is None:
        raise ApiError(400, f"'{field}' must be {what}", field)
    return value


def _token_ids(body: dict[str, Any], field: str) -> list[int] | None:
    """A list of token ids (pydantic's lax integers), or None when absent or null."""
    raw = body.get(field)
    if raw is None:
        return None
    ids = [lax_int(item) for item in raw] if isinstance(raw, list) else [None]
    if any(i is None for i in ids):
        raise ApiError(400, f"'{field}' must be a list of integers", field)
    return [i for i in ids if i is not None]


def _stop(body: dict[str, Any], responses: bool) -> list[str]:
    """`stop` as a list of strings. The Responses API drops an empty `stop` ("" included) before
    vLLM sees it; chat and completions hand "" on, which vLLM then refuses."""
    raw = body.get("stop")
    if raw is None or (responses and not raw):
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return list(raw)
    raise ApiError(400, "'stop' must be a string or a list of strings", "stop")


def _logit_bias(body: dict[str, Any]) -> dict[int, float] | None:
    """`logit_bias` as vLLM converts it: keys read by Python's ``int()`` (those it cannot read are
    its 400, named together), biases clamped to [-100, 100]."""
    raw = body.get("logit_bias")
    if raw is None:
        return None
    biases = {key: lax_float(bias) for key, bias in raw.items()} if isinstance(raw, dict) else {"": None}
    converted: dict[int, float] = {}
    unreadable: list[str] = []
    for key, bias in biases.items():
        if bias is None:
            raise ApiError(400, "'logit_bias' must be an object mapping token ids to numbers", "logit_bias")
        try:
            token = int(key)
        except ValueError:
            unreadable.append(key)
            continue
        converted[token] = min(100.0, max(-100.0, bias))
    if unreadable:
        raise refusal(
            f"logit_bias contains key(s) that cannot be converted to integer token IDs: {unreadable!r}",
            "logit_bias",
            unreadable,
        )
    return converted
