"""Request fields read as vLLM reads them. vLLM's request models are pydantic models in lax mode,
which take more than the JSON type a field names: a boolean field takes 0 and 1 and words such as
"yes", an integer field takes `true`, `5.0` and "5". The simulator takes what they take (pydantic
2's conversion table, as checked against pydantic 2.14) and refuses the rest."""

from __future__ import annotations

import re

_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")
# Unicode's White_Space, what pydantic (Rust's `str::trim`) strips around a number: Python's
# `str.strip()` strips \x1c-\x1f too, which pydantic refuses.
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
# pydantic reads a float as an integer only within i64, both ends excluded.
_FLOAT_INT_BOUND = 2.0**63
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def lax_int(value: object) -> int | None:
    """The integer pydantic's lax mode reads from a JSON value, or None where it refuses one: an
    integer, a boolean (1 or 0), a float without a fractional part, or a string holding one of
    those digits (surrounding whitespace, `_` between digits and a `.0` tail allowed)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < _FLOAT_INT_BOUND else None
    if isinstance(value, str):
        text = value.strip(_WHITESPACE)
        if _INT_TEXT.fullmatch(text):
            return int(text.split(".", 1)[0])
    return None


def lax_bool(value: object) -> bool | None:
    """The boolean pydantic's lax mode reads from a JSON value, or None where it refuses one: a
    boolean, 0 or 1 (integer or float), or one of true/false, yes/no, on/off, t/f, y/n, 1/0 in any
    letter case (no surrounding whitespace)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


_DIGITS = r"[0-9](?:_?[0-9])*"
_FLOAT_TEXT = re.compile(
    rf"[+-]?(?:(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?|inf|infinity|nan)",
    re.IGNORECASE,
)


def lax_float(value: object) -> float | None:
    """The float pydantic's lax mode reads from a JSON value, or None where it refuses one: a
    number or a boolean, or a string holding a decimal number (exponent, `_` between digits,
    `inf` and `nan` allowed, surrounding whitespace stripped). NaN and infinities pass: vLLM's
    own checks name them."""
    if isinstance(value, bool | int):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        text = value.strip(_WHITESPACE)
        if _FLOAT_TEXT.fullmatch(text):
            return float(text.replace("_", ""))
    return None
