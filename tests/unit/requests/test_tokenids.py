"""Token-id lists checked without a Python call per item: the same answers as the per-item
checks they replace, at the edges of each range."""

from __future__ import annotations

import pytest

from epp.requests.tokenids import INT64_MIN, UINT64_END, are_ints, are_token_ids


@pytest.mark.parametrize(
    ("values", "ints"),
    [
        ([], True),
        ([0, 1, 2**70, -5], True),
        ([1, True], False),  # JSON true is a bool, not a token id
        ([False], False),
        ([1, 2.0], False),
        (["1"], False),
        ([1, None], False),
        ([[1]], False),
    ],
)
def test_are_ints_takes_integers_only(values: list[object], ints: bool) -> None:
    assert are_ints(values) is ints
    assert are_ints(values) == all(isinstance(v, int) and not isinstance(v, bool) for v in values)


@pytest.mark.parametrize(
    ("values", "ids"),
    [
        ([], True),
        ([INT64_MIN, UINT64_END - 1], True),
        ([INT64_MIN - 1], False),
        ([0, UINT64_END], False),
        ([3, True], False),
        ([3, 4.0], False),
    ],
)
def test_are_token_ids_keeps_the_64_bits_block_hashes_take(values: list[object], ids: bool) -> None:
    assert are_token_ids(values) is ids


def test_are_token_ids_takes_a_narrower_range() -> None:
    """SGLang's `/generate` input_ids are uint32."""
    assert are_token_ids([0, 2**32 - 1], 0, 2**32)
    assert not are_token_ids([2**32], 0, 2**32)
    assert not are_token_ids([-1, 5], 0, 2**32)
