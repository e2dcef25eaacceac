"""The precise index's `cbor-fnv` keys in C (`_blockkeys.c`) against the Python chain they
replace: tokens at every CBOR head width (up to 2**32 - 1), parents at the ends of 64 bits, block
sizes whose CBOR array head is one, two or three bytes, partial trailing blocks, empty prompts;
and the token sequences it reads in place.
Skipped when the extension is not built."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("epp.datalayer._blockkeys")

from epp.datalayer._blockkeys import cbor_fnv_keys
from epp.datalayer.kvblocks import TokenProcessor

EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1]
tokens = st.lists(st.one_of(st.sampled_from(EDGES), st.integers(0, 2**32 - 1)), max_size=300)
parents = st.one_of(st.none(), st.sampled_from([0, 23, 24, 2**32, 2**64 - 1]), st.integers(0, 2**64 - 1))


@settings(max_examples=300, deadline=None)
@given(tokens, parents, st.sampled_from([1, 2, 3, 16, 23, 24, 64, 256]), st.text(max_size=5))
def test_compiled_keys_are_the_python_chains(
    prompt: list[int], parent: int | None, size: int, seed: str
) -> None:
    compiled = TokenProcessor(size, hash_seed=seed)
    python = TokenProcessor(size, hash_seed=seed, compiled=False)
    assert compiled._compiled is not None and python._compiled is None
    expected = python.keys(prompt, "model", parent)
    assert compiled.keys(prompt, "model", parent) == expected
    assert python.keys(prompt, "model", parent) == expected  # and again from the Python memo


def test_out_of_range_tokens_fail_as_the_python_chain_does() -> None:
    for processor in (TokenProcessor(2), TokenProcessor(2, compiled=False)):
        with pytest.raises(OverflowError):
            processor.keys([1, 2**32], "model")
        with pytest.raises(OverflowError):
            processor.keys([-1, 2], "model")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="block_size must be positive"):
        cbor_fnv_keys([0, 0], 0, 1)
    with pytest.raises(TypeError, match="sequence of integers"):
        cbor_fnv_keys(5, 1, 1)
    with pytest.raises(TypeError):
        cbor_fnv_keys([1, 2.0], 1, 1)
    with pytest.raises(OverflowError):
        cbor_fnv_keys([], 1, -1)
    with pytest.raises(OverflowError):
        cbor_fnv_keys([], 1, 2**64)
    assert cbor_fnv_keys([0, 0, 0], 4, 0) == []


def test_tokens_are_read_from_any_sequence_of_integers() -> None:
    """A list or tuple in place, other sequences (an array, numpy's integers) as array('I') reads
    them; only full blocks are read, so a bad token in the partial tail is not looked at."""
    expected = TokenProcessor(2, compiled=False).keys([1, 2, 3, 4], "model", 7)
    for tokens in ([1, 2, 3, 4], (1, 2, 3, 4), array("I", [1, 2, 3, 4]), [True, 2, 3, 4]):
        assert cbor_fnv_keys(tokens, 2, 7) == expected
    assert cbor_fnv_keys([1, 2, 3, 4, -1], 2, 7) == expected
    numpy = pytest.importorskip("numpy")
    assert cbor_fnv_keys(numpy.array([1, 2, 3, 4], dtype=numpy.int64), 2, 7) == expected


@pytest.mark.parametrize("size", [65535, 65536, 70001])
def test_block_sizes_whose_array_head_is_three_or_five_bytes(size: int) -> None:
    """A block size at or past 2**16 writes the CBOR array head on three or five bytes."""
    prompt = [(n * 2654435761) % 2**32 for n in range(2 * size + 7)]
    for parent in (None, 2**64 - 1):
        python = TokenProcessor(size, compiled=False).keys(prompt, "model", parent)
        assert TokenProcessor(size).keys(prompt, "model", parent) == python and len(python) == 2


def test_a_huge_block_size_yields_no_key_and_reads_nothing_past_the_data() -> None:
    assert cbor_fnv_keys(array("I", [1, 2, 3]), 2**62, 0) == []
    with pytest.raises(OverflowError):
        cbor_fnv_keys([], 2**63, 0)
    with pytest.raises(TypeError):
        cbor_fnv_keys([], 1, 1.0)
