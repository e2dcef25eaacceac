"""vLLM's sampling-parameter and vocabulary checks as the simulator answers them: each rule's 400,
its `param` and its exact message (vllm/sampling_params.py, vllm/v1/engine/input_processor.py)."""

from __future__ import annotations

from typing import Any

import pytest

from epp.sim.openai_api import ApiError, parse_chat, parse_completion, parse_embedding_input, parse_responses
from epp.sim.tokens import VOCAB_SIZE

CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
COMPLETION = {"model": "m", "prompt": "x"}
RESPONSES = {"model": "m", "input": "x"}
OUT = 999_999_999  # a token id far beyond the vocabulary


def refused(parse: Any, body: dict[str, Any]) -> tuple[int, str | None, str]:
    with pytest.raises(ApiError) as caught:
        parse(body)
    error = caught.value
    assert error.body()["type"] == "BadRequestError"
    return error.status, error.param, error.message


def parses(parse: Any) -> dict[str, Any]:
    return {parse_chat: CHAT, parse_completion: COMPLETION, parse_responses: RESPONSES}[parse]


ALL = (parse_chat, parse_completion, parse_responses)
TWO = (parse_chat, parse_completion)  # vLLM reads these fields on chat and completions only

RULES: list[tuple[tuple[Any, ...], dict[str, Any], str | None, str]] = [
    (ALL, {"temperature": -1}, "temperature",
     "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)"),
    (ALL, {"temperature": float("nan")}, "temperature",
     "temperature must be a finite number, got nan. (parameter=temperature, value=nan)"),
    (ALL, {"temperature": "inf"}, "temperature",
     "temperature must be a finite number, got inf. (parameter=temperature, value=inf)"),
    (ALL, {"temperature": 2.5}, "temperature",
     "temperature must be in [0, 2], got 2.5. (parameter=temperature, value=2.5)"),
    (ALL, {"top_p": 0}, "top_p", "top_p must be in (0, 1], got 0.0. (parameter=top_p, value=0.0)"),
    (ALL, {"top_p": 1.5}, "top_p", "top_p must be in (0, 1], got 1.5. (parameter=top_p, value=1.5)"),
    (ALL, {"top_k": -2}, None, "top_k must be 0 (disable), or at least 1, got -2."),
    (ALL, {"repetition_penalty": 0}, None, "repetition_penalty must be greater than zero, got 0.0."),
    (ALL, {"repetition_penalty": float("inf")}, None, "repetition_penalty must be a finite number, got inf."),
    (TWO, {"min_p": 1.5}, None, "min_p must be in [0, 1], got 1.5."),
    (TWO, {"presence_penalty": 2.5}, None, "presence_penalty must be in [-2, 2], got 2.5."),
    (TWO, {"frequency_penalty": -3}, None, "frequency_penalty must be in [-2, 2], got -3.0."),
    (TWO, {"n": 0}, None, "n must be at least 1, got 0."),
    (TWO, {"n": 2, "temperature": 0}, None, "n must be 1 when using greedy sampling, got 2."),
    ((parse_chat,), {"max_tokens": 0}, "max_tokens",
     "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"),
    ((parse_chat,), {"max_completion_tokens": -3}, "max_tokens",
     "max_tokens must be at least 1, got -3. (parameter=max_tokens, value=-3)"),
    ((parse_responses,), {"max_output_tokens": 0}, "max_tokens",
     "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"),
    (TWO, {"min_tokens": -1}, None, "min_tokens must be greater than or equal to 0, got -1."),
    (TWO, {"min_tokens": 10, "max_tokens": 5}, None,
     "min_tokens must be less than or equal to max_tokens=5, got 10."),
    # completions' `max_tokens` defaults to 16
    ((parse_completion,), {"min_tokens": 20}, None,
     "min_tokens must be less than or equal to max_tokens=16, got 20."),
    (TWO, {"stop": ""}, None, "stop cannot contain an empty string."),
    (ALL, {"stop": ["end", ""]}, None, "stop cannot contain an empty string."),
    (TWO, {"stop_token_ids": [5, OUT, -1, OUT]}, "stop_token_ids",
     f"token_id(s) [{OUT}, -1] in stop_token_ids contain out-of-vocab token ids. Vocabulary size: 128256 "
     f"(parameter=stop_token_ids, value=[{OUT}, -1])"),
    (ALL, {"logit_bias": {"5": 1, str(VOCAB_SIZE): -1}}, "logit_bias",
     "token_id(s) [128256] in logit_bias contain out-of-vocab token ids. Vocabulary size: 128256 "
     "(parameter=logit_bias, value=[128256])"),
    (ALL, {"logit_bias": {"abc": 1, "5": 2, "1.5": 3}}, "logit_bias",
     "logit_bias contains key(s) that cannot be converted to integer token IDs: ['abc', '1.5'] "
     "(parameter=logit_bias, value=['abc', '1.5'])"),
    (TWO, {"allowed_token_ids": []}, "allowed_token_ids",
     "allowed_token_ids is not None and empty! (parameter=allowed_token_ids, value=[])"),
    (TWO, {"allowed_token_ids": [1, OUT]}, "allowed_token_ids",
     f"allowed_token_ids contains out-of-vocab token id! (parameter=allowed_token_ids, value=[{OUT}])"),
    # vLLM's first failing check is the one answered: _verify_args in its order, then the vocabulary
    (ALL, {"top_p": 0, "temperature": -1}, "temperature",
     "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)"),
    (TWO, {"presence_penalty": 3, "n": 0}, None, "n must be at least 1, got 0."),
    (TWO, {"stop_token_ids": [OUT], "logit_bias": {str(OUT): 1}}, "logit_bias",
     f"token_id(s) [{OUT}] in logit_bias contain out-of-vocab token ids. Vocabulary size: 128256 "
     f"(parameter=logit_bias, value=[{OUT}])"),
    # the key conversion comes before SamplingParams exists
    (ALL, {"temperature": -1, "logit_bias": {"x": 1}}, "logit_bias",
     "logit_bias contains key(s) that cannot be converted to integer token IDs: ['x'] "
     "(parameter=logit_bias, value=['x'])"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parse", "fields", "param", "message"),
    [(parse, fields, param, message) for parsers, fields, param, message in RULES for parse in parsers],
    ids=lambda v: getattr(v, "__name__", None) or (repr(v)[:40] if isinstance(v, dict) else ""),
)
def test_each_rule_is_vllms_400(parse: Any, fields: dict[str, Any], param: str | None, message: str) -> None:
    assert refused(parse, {**parses(parse), **fields}) == (400, param, message)


def test_a_prompt_token_id_beyond_the_vocabulary_is_vllms_400() -> None:
    for prompt in ([1, OUT, 7], [[1, 2], [VOCAB_SIZE, VOCAB_SIZE + 9]]):
        largest = OUT if prompt[1] == OUT else VOCAB_SIZE + 9
        expected = (400, None, f"Token id {largest} is out of vocabulary")
        assert refused(parse_completion, {**COMPLETION, "prompt": prompt}) == expected
    with pytest.raises(ApiError, match=f"^Token id {OUT} is out of vocabulary$"):
        parse_embedding_input({"input": [OUT]})
    # the sampling parameters are checked first
    body = {**COMPLETION, "prompt": [OUT], "top_p": 0}
    assert refused(parse_completion, body)[1] == "top_p"
    assert parse_completion({**COMPLETION, "prompt": [0, VOCAB_SIZE - 1]}).prompts == [[0, VOCAB_SIZE - 1]]


EDGES: list[tuple[tuple[Any, ...], str, tuple[Any, ...], tuple[Any, ...]]] = [
    (ALL, "temperature", (0, 2, "0.5", None), (-1e-9, 2.000001)),
    (ALL, "top_p", (1e-9, 1, None), (0, 1.01)),
    (ALL, "top_k", (-1, 0, 50, None), (-2,)),
    (ALL, "repetition_penalty", (0.01, 5, None), (0, -1)),
    (TWO, "min_p", (0, 1, None), (-0.1, 1.1)),
    (TWO, "presence_penalty", (-2, 2, None), (-2.1, 2.1)),
    (TWO, "frequency_penalty", (-2, 2, None), (-2.1, 2.1)),
    (TWO, "stop_token_ids", ([0, VOCAB_SIZE - 1], None), ([VOCAB_SIZE], [-1])),
    (
        ALL,
        "logit_bias",
        ({"0": 500, str(VOCAB_SIZE - 1): -500}, {" 7": "1.5"}, None),
        ({str(VOCAB_SIZE): 0},),
    ),
    (TWO, "allowed_token_ids", ([VOCAB_SIZE - 1], None), ([], [VOCAB_SIZE])),
]


@pytest.mark.parametrize(
    ("parse", "field", "taken", "refused_values"),
    [(parse, *edge) for parsers, *edge in EDGES for parse in parsers],
    ids=lambda v: getattr(v, "__name__", None) or (v if isinstance(v, str) else ""),
)
def test_vllms_edges_are_taken_and_the_values_past_them_refused(
    parse: Any, field: str, taken: tuple[Any, ...], refused_values: tuple[Any, ...]
) -> None:
    """The edges vLLM takes, and null where its fields are optional (its default); just past an
    edge, its 400."""
    for value in taken:
        parse({**parses(parse), field: value})
    for value in refused_values:
        assert refused(parse, {**parses(parse), field: value})[0] == 400


def test_the_responses_api_ignores_what_vllm_does_not_read_there() -> None:
    """vLLM's Responses API hands no penalties but repetition, no min_p, min_tokens, stop token
    ids or allowed token ids to its sampler, and drops an empty `stop`."""
    ignored = {
        "presence_penalty": 9,
        "frequency_penalty": -9,
        "min_p": 5,
        "min_tokens": -4,
        "stop_token_ids": [OUT],
        "allowed_token_ids": [],
        "stop": "",
    }
    assert parse_responses({**RESPONSES, **ignored}).min_tokens == 0


LOGIT_BIAS_TYPE = "'logit_bias' must be an object mapping token ids to numbers"


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"temperature": "hot"}, "temperature", "'temperature' must be a number"),
        ({"top_k": 1.5}, "top_k", "'top_k' must be an integer"),
        ({"stop_token_ids": [1, "x"]}, "stop_token_ids", "'stop_token_ids' must be a list of integers"),
        ({"allowed_token_ids": 5}, "allowed_token_ids", "'allowed_token_ids' must be a list of integers"),
        ({"logit_bias": {"1": "much"}}, "logit_bias", LOGIT_BIAS_TYPE),
        ({"logit_bias": [1]}, "logit_bias", LOGIT_BIAS_TYPE),
        ({"stop": 5}, "stop", "'stop' must be a string or a list of strings"),
    ],
)  # fmt: skip
def test_values_of_the_wrong_type_are_a_400_naming_the_field(
    fields: dict[str, Any], param: str, message: str
) -> None:
    assert refused(parse_chat, {**CHAT, **fields}) == (400, param, message)


@pytest.mark.parametrize("parse", TWO)
def test_a_tiny_positive_temperature_is_raised_not_greedy(parse: Any) -> None:
    """vLLM raises 0 < temperature < 0.01 to 0.01 before its checks, so `n` > 1 with
    `temperature: 1e-6` samples; only 0 is greedy and refused with n > 1."""
    assert parse({**parses(parse), "n": 2, "temperature": 1e-6}).n == 2
    assert refused(parse, {**parses(parse), "n": 2, "temperature": 0.0})[2] == (
        "n must be 1 when using greedy sampling, got 2."
    )
