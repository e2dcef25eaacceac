"""The prefix index's C parts (_blockindex.c) against their pure-Python versions: the tables give
the same matches (order included), LRU orders, sizes and holdings through growth, eviction,
removal and rekeying, and refuse bad hashes without changing anything; the block-hash chain gives
the xxhash package's values."""

from __future__ import annotations

import random
from array import array

import pytest

from epp.scheduling.prefix._blockindex import chain_hashes
from epp.scheduling.prefix.hashing import _python_chain, block_hashes, block_keys
from epp.scheduling.prefix.index import CompiledPrefixIndex, PythonPrefixIndex, new_prefix_index
from tests.unit.plugin_helpers import endpoints


def test_the_compiled_index_is_the_one_in_use() -> None:
    """`make install` (or `python setup.py build_ext --inplace`) builds it; without it every
    decision runs on the slower Python tables."""
    assert isinstance(new_prefix_index(), CompiledPrefixIndex)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pool_size", [12, 90])  # 90: ids past 64, which match counts per node
def test_random_operations_give_the_same_state_in_both(seed: int, pool_size: int) -> None:
    rng = random.Random(seed)
    pool = endpoints(pool_size)
    compiled, python = CompiledPrefixIndex(), PythonPrefixIndex()
    # Chains of shared prefixes (as prompts hash) plus, sometimes, a repeated or wide 64-bit block.
    prefixes = [[rng.getrandbits(64) for _ in range(rng.randrange(1, 40))] for _ in range(30)]
    for step in range(3000):
        roll = rng.random()
        if roll < 0.02:
            gone = rng.choice(pool)
            compiled.remove_endpoint(gone)
            python.remove_endpoint(gone)
        elif roll < 0.03:
            old, new = rng.sample(pool, 2)
            compiled.rekey(old, new)
            python.rekey(old, new)
        else:
            hashes = rng.choice(prefixes)[: rng.randrange(0, 40)]
            hashes = hashes + [rng.getrandbits(64) for _ in range(rng.randrange(0, 12))]
            if rng.random() < 0.05 and hashes:
                hashes.append(hashes[0])  # listed twice
            if rng.random() < 0.05:
                hashes.append(2**64 - 1)
            assert list(compiled.match(hashes).items()) == list(python.match(hashes).items()), step
            target = rng.choice(pool)
            capacity = rng.choice([0, 1, 5, 60, 200])
            compiled.add(target, hashes, capacity)
            python.add(target, hashes, capacity)
        if step % 100 == 0 or step == 2999:
            assert compiled.size() == python.size()
            assert compiled.endpoints() == python.endpoints()
            for e in pool:
                assert compiled.lru(e) == python.lru(e)
                assert compiled.blocks_held(e) == python.blocks_held(e)


def test_many_blocks_grow_and_shrink_the_tables() -> None:
    """Past the tables' first sizes, and evicted back down: every block is still found."""
    compiled, python = CompiledPrefixIndex(), PythonPrefixIndex()
    a, b = endpoints(2)
    chain = list(range(1, 20_001))  # small, consecutive keys: the worst case for a weak hash
    for index in (compiled, python):
        index.add(a, chain, 50_000)
        index.add(b, chain[:5_000], 50_000)
        index.add(a, chain[:100], 1_000)  # keeps those 100 and its 900 newest
    assert compiled.size() == python.size() == 5_900  # b's 5,000 and a's newest 900
    assert compiled.lru(a) == python.lru(a) == chain[19_100:] + chain[:100]
    assert compiled.match(chain) == python.match(chain) == {a: 100, b: 5_000}
    assert compiled.match(chain[19_100:]) == {a: 900}


@pytest.mark.parametrize(
    ("hashes", "error"),
    [([1, "2"], TypeError), ([1, -1], OverflowError), ([1, 2**64], OverflowError)],
)
def test_hashes_outside_unsigned_64_bits_are_refused_and_change_nothing(
    hashes: list[object], error: type[Exception]
) -> None:
    index = CompiledPrefixIndex()
    (a,) = endpoints(1)
    index.add(a, [1], 10)
    with pytest.raises(error):
        index.add(a, hashes, 10)  # type: ignore[arg-type]
    with pytest.raises(error):
        index.match(hashes)  # type: ignore[arg-type]
    assert index.lru(a) == [1] and index.size() == 1


@pytest.mark.parametrize("block_size", [1, 4, 7, 32, 33, 64, 100])
def test_the_compiled_chain_gives_xxhashs_values(block_size: int) -> None:
    """Every length around XXH64's 4-, 8- and 32-byte steps, full and trailing partial blocks."""
    rng = random.Random(block_size)
    for length in [*range(300), 4096, 16_390]:
        data = rng.randbytes(length)
        seed = rng.getrandbits(64)
        assert chain_hashes(memoryview(data), seed, block_size) == _python_chain(
            memoryview(data), seed, block_size
        ), length


def test_the_compiled_chain_refuses_a_bad_seed_or_block_size() -> None:
    with pytest.raises(OverflowError):
        chain_hashes(memoryview(b"abcd"), -1, 2)
    with pytest.raises(ValueError, match="block_size must be positive"):
        chain_hashes(memoryview(b"abcd"), 1, 0)


def test_packed_keys_are_the_chains_values_and_the_index_takes_them_as_they_are() -> None:
    rng = random.Random(5)
    compiled, python = CompiledPrefixIndex(), PythonPrefixIndex()
    a, b = endpoints(2)
    for length in (0, 63, 64, 1000, 16_390):
        data = rng.randbytes(length)
        keys = block_keys(data, 9, 64, 0)
        assert isinstance(keys, array) and list(keys) == block_hashes(data, 9, 64, 0)
        assert list(block_keys(data, 9, 64, 3)) == block_hashes(data, 9, 64, 3)
        compiled.add(a, keys, 100)
        python.add(a, list(keys), 100)
        compiled.add(b, keys[:5], 100)
        python.add(b, list(keys[:5]), 100)
        assert compiled.match(keys) == python.match(list(keys)) == compiled.match(list(keys))
    assert compiled.lru(a) == python.lru(a) and compiled.size() == python.size()


@pytest.mark.parametrize("packed", [array("q", [1, 2]), b"\x01" * 16, array("I", [1, 2])])
def test_a_buffer_of_another_type_is_refused(packed: object) -> None:
    index = CompiledPrefixIndex()
    (a,) = endpoints(1)
    with pytest.raises(TypeError, match=r"unsigned 64-bit \('Q'\)"):
        index.add(a, packed, 10)  # type: ignore[arg-type]
    assert index.size() == 0
