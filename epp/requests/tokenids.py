"""Whether a JSON array is a list of token ids, checked by C loops (a set of the items' types,
`min`, `max`) rather than a Python call per item: a prompt of 2 million ids (15 MB, under the
16 MiB body limit) held the event loop about 2 s per check, and a request passed several."""

from __future__ import annotations

from typing import Any

INT64_MIN = -(2**63)
UINT64_END = 2**64  # orjson reads integers up to 2**64 - 1; longer ones are read exactly since


def are_ints(values: list[Any]) -> bool:
    """Every item an integer (a JSON `true` is a bool, not one). True for an empty list."""
    return not values or set(map(type, values)) == {int}


def are_token_ids(values: list[Any], low: int = INT64_MIN, end: int = UINT64_END) -> bool:
    """Every item an integer in [low, end): the EPP's default is the 64 bits its block hashes are
    made of (a longer id was read as a float and refused)."""
    return not values or (are_ints(values) and low <= min(values) and max(values) < end)
