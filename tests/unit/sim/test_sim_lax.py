"""The simulator's lax reading of booleans and integers against pydantic's own (the library vLLM's
request models are built on, in lax mode), over the JSON values a client may send."""

from __future__ import annotations

import math
from typing import Any

import pydantic
import pytest

from epp.sim.lax import lax_bool, lax_float, lax_int


class VllmFields(pydantic.BaseModel):
    """Fields typed as vLLM types them (`logprobs: bool | None`, `max_tokens: int | None`,
    `temperature: float | None`)."""

    flag: bool | None = None
    count: int | None = None
    number: float | None = None  # `temperature`, `top_p`, the penalties


def pydantic_reads(field: str, value: Any) -> Any:
    """What pydantic makes of `value` for `field`, or None where it refuses it."""
    try:
        return getattr(VllmFields.model_validate({field: value}), field)
    except pydantic.ValidationError:
        return None


VALUES: list[Any] = [
    *(True, False, 0, 1, 2, -1, 0.0, 1.0, 0.5, 5.0, 5.5, -0.0, float("inf"), float("nan")),
    *("true", "False", "TRUE", "yes", "No", "on", "OFF", "t", "f", "y", "n", "1", "0"),
    *("", " ", " true", "maybe", "5", " 5 ", "\t7\n", "+3", "-3", "05", "5.0", "5.00", "-5.0"),
    *("5.", "5.5", "1e3", "0x10", "1_000", "1__0", "_1", "1_", "5 5", "\u0663"),
    # Python's strip() takes \x1c-\x1f for whitespace, pydantic does not; Unicode's spaces both do.
    *("5\x1c", "\x1f5", "\xa05\u2003", "5\u3000", "\x855"),
    # pydantic reads a float as an integer within i64 only (big integers it reads whole).
    *(1e19, -1e19, 2.0**63, -(2.0**63), 2.0**62, 1e300, 2**70, "9223372036854775808"),
    *([], {}, [1], {"a": 1}),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_booleans_are_read_as_pydantic_reads_them(value: Any) -> None:
    assert lax_bool(value) == pydantic_reads("flag", value)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_integers_are_read_as_pydantic_reads_them(value: Any) -> None:
    read = lax_int(value)
    assert read == pydantic_reads("count", value)
    assert read is None or type(read) is int


FLOAT_TEXTS = (
    "inf",
    "-Infinity",
    "NaN",
    "+nan",
    "1e",
    "e3",
    ".5",
    "1.5e-3",
    "1e1_0",
    "1_000.5",
    "1.2.3",
    10**400,
)


@pytest.mark.parametrize("value", [*VALUES, *FLOAT_TEXTS], ids=repr)
def test_floats_are_read_as_pydantic_reads_them(value: Any) -> None:
    read, expected = lax_float(value), pydantic_reads("number", value)
    assert (read is None, type(read)) == (expected is None, type(expected))
    assert read is None or read == expected or (math.isnan(read) and math.isnan(expected))
