"""Value types config files write as strings: Go durations and Kubernetes quantities."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

from epp.params.duration import parse_duration

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_QUANTITY_SCALE = {
    None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def parse_quantity(value: str | int | float) -> int:
    """A Kubernetes resource quantity (`500`, `1Gi`, `2M`, `1e3`) as a whole number, rounded up."""
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _QUANTITY.match(value.strip())
        if not match:
            raise ValueError(
                f"invalid quantity {value!r}: use a number with an optional suffix such as 1Gi or 500M"
            )
        number = float(match.group(1)) * _QUANTITY_SCALE[match.group(2)]
    if number < 0:
        raise ValueError(f"invalid quantity {value!r}: must not be negative")
    whole = int(number)
    return whole if whole == number else whole + 1


def _duration(value: Any) -> Any:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        seconds = parse_duration(value)
        if seconds < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return seconds
    return value


def _quantity(value: Any) -> Any:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return parse_quantity(value)
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
"""Seconds, written as a Go duration (`200ms`, `2m`) or a bare number of seconds."""

Quantity = Annotated[int, BeforeValidator(_quantity)]
"""A Kubernetes quantity (`1Gi`, `500`), as an integer."""


def unquote(value: str) -> str:
    """`value` without one pair of matching surrounding quotes (`"x"` or `'x'`): Helm charts
    render flags such as `--x="sglang:num_queue_reqs"` into argv with the quotes inside."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value
