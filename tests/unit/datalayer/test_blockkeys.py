"""The precise index's `cbor-fnv` keys in C (`_blockkeys.c`) against the Python chain they
replace: tokens at every CBOR head width (up to 2**32 - 1), parents at the ends of 64 bits, block
sizes whose CBOR array head is one, two or three bytes, partial trailing blocks, empty prompts;
the token sequences it reads in place; and prompts reusing a known prompt's leading keys.
Skipped when the extension is not built."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("epp.datalayer._blockkeys")

from epp.datalayer._blockkeys import cbor_fnv_keys, common_blocks
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


def test_common_blocks_counts_whole_blocks_of_the_same_ints() -> None:
    """Identical objects, or exact ints of one value; other numbers equal to an int never match,
    so a token the chain refuses is never reused past."""
    assert common_blocks([1, 2, 3, 4, 5], [1, 2, 3, 4, 6], 2) == 2
    assert common_blocks([1, 2, 3], [1, 2, 3, 4, 5, 6], 2) == 1
    assert common_blocks([int("70000"), 2], [70000, 2], 1) == 2  # equal values, distinct objects
    assert common_blocks([1.0, 2], [1, 2], 1) == 0
    assert common_blocks([True, 2], [1, 2], 1) == 0
    assert common_blocks([2**70 + 1], [2**70 + 2], 1) == 0
    assert common_blocks([], [1], 3) == 0
    with pytest.raises(ValueError, match="block_size must be positive"):
        common_blocks([1], [1], 0)
    with pytest.raises(TypeError, match="sequence of integers"):
        common_blocks(5, [1], 1)


prompts = st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=60)


@settings(max_examples=300, deadline=None)
@given(prompts, st.lists(st.tuples(st.integers(0, 60), prompts), max_size=6), st.sampled_from([1, 2, 3, 4]))
def test_prompts_reusing_known_keys_get_the_chains_keys(
    shared: list[int], variants: list[tuple[int, list[int]]], size: int
) -> None:
    """Prompts that share a first block with a known prompt, for some or all of its blocks (the
    same int objects or equal ones), get the keys the chain gives them from the root; an engine's
    store at the root the same; a chain on another parent is not reused."""
    memo, python = TokenProcessor(size), TokenProcessor(size, compiled=False)
    root = memo.root("model")
    for keep, tail in [(len(shared), []), *variants]:
        prompt = shared[:keep] + tail
        copied = [int(str(token)) for token in prompt]
        for tokens in (prompt, copied):
            assert memo.keys(tokens, "model") == python.keys(tokens, "model")
            assert memo.keys(tokens, "model", root) == python.keys(tokens, "model")
            assert memo.keys(tokens, "model", 5) == python.keys(tokens, "model", 5)
    with pytest.raises(TypeError):  # a bad token after the known ones: refused as the chain refuses it
        memo.keys([*shared[:size], 1.5, *[0] * (size - 1)], "model")


def test_known_prompts_are_bounded_by_their_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("epp.datalayer.kvblocks.MAX_KNOWN_TOKENS", 8)
    processor = TokenProcessor(2)
    for first in range(5):
        processor.keys([first, 0, 1, 2, 3, 4], "model")
    assert processor._known_tokens <= 8 and len(processor._known) <= 2
