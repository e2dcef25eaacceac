"""The prefix index's C tables (_blockindex.c) where a C bug would crash the EPP or quietly change
its routing: objects made without `__init__`, allocations failing mid-operation, odd arguments,
and reference counts. Probes that could crash run in a child interpreter, so a crash is a failed
test rather than a dead test run. Skipped when the extension is not built."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from array import array

import pytest

pytest.importorskip("epp.scheduling.prefix._blockindex")

from epp.scheduling.prefix._blockindex import BlockIndex, chain_hashes, chain_keys
from epp.scheduling.prefix.hashing import _python_chain
from epp.scheduling.prefix.index import CompiledPrefixIndex, PythonPrefixIndex
from tests.unit.plugin_helpers import endpoints


def run_isolated(code: str) -> str:
    """Run `code` in a child interpreter; its stdout, or a failure naming how it ended."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def test_an_index_made_without_init_is_usable() -> None:
    """`BlockIndex.__new__(BlockIndex)` skips `__init__`; its tables must exist all the same."""
    out = run_isolated(
        """
        from epp.scheduling.prefix._blockindex import BlockIndex
        tables = BlockIndex.__new__(BlockIndex)
        print(tables.match([1], []), tables.size())
        tables.add(0, [1, 2], 10)
        print(tables.lru(0), tables.match([1, 2], ["a"]))
        """
    )
    assert out.split("\n")[:2] == ["{} 0", "[1, 2] {'a': 2}"]


def test_arguments_to_the_constructor_are_refused() -> None:
    with pytest.raises(TypeError):
        BlockIndex(1)  # type: ignore[call-arg]


def consistent(tables: BlockIndex, ids: range) -> None:
    """Every block indexed is held by someone, and each endpoint's count is its LRU's length."""
    lrus = [tables.lru(e) for e in ids]
    assert [len(lru) for lru in lrus] == [tables.held(e) for e in ids]
    assert tables.size() == len(set().union(*lrus))


@pytest.mark.parametrize("failing", range(40))
def test_a_failed_allocation_leaves_no_block_without_holders(failing: int) -> None:
    """An add that runs out of memory while growing the (block, endpoint) table after making a new
    block record must not leave that block indexed with no holder: match would walk past it as if
    held (here crediting both endpoints with block 1 behind it) and the size gauge would count it
    for good."""
    testcapi = pytest.importorskip("_testcapi")
    tables = BlockIndex()
    tables.add(0, list(range(1, 501)), 1000)  # 500 blocks, 500 nodes
    tables.add(1, list(range(1, 13)), 1000)  # 512 nodes: the next one grows their table
    hashes = [9999]
    testcapi.set_nomemory(failing, failing + 1)
    try:
        tables.add(1, hashes, 1000)
    except MemoryError:
        pass
    finally:
        testcapi.remove_mem_hooks()
    consistent(tables, range(2))
    held = tables.lru(1)[-1] == 9999
    assert tables.match([9999, 1], ["a", "b"]) == ({"b": 2, "a": 1} if held else {})


@pytest.mark.parametrize("block_size", [sys.maxsize, sys.maxsize - 1, 2**62])
def test_a_block_larger_than_the_data_is_one_trailing_block(block_size: int) -> None:
    """The block count was rounded up as (len + block_size - 1) / block_size, which wraps for a
    huge block size: a MemoryError or SystemError instead of the one hash Python gives."""
    expected = _python_chain(memoryview(b"abc"), 7, block_size)
    assert len(expected) == 1
    assert chain_hashes(memoryview(b"abc"), 7, block_size) == expected
    assert list(array("Q", chain_keys(memoryview(b"abc"), 7, block_size))) == expected


@pytest.mark.parametrize("capacity", [2**63, 10**30, -(2**63) - 1])
def test_a_capacity_beyond_64_bits_is_taken_as_the_python_index_takes_it(capacity: int) -> None:
    """`lruCapacityPerServer` has no upper bound and autoTune takes the engine's reported block count
    (num_gpu_blocks="1e19" is int 10**19): the C tables refused such a capacity with an
    OverflowError on every request's PreRequest, where the Python index simply never evicts (or,
    below zero, keeps one block)."""
    compiled, python = CompiledPrefixIndex(), PythonPrefixIndex()
    (a,) = endpoints(1)
    for index in (compiled, python):
        index.add(a, [1, 2, 3], capacity)
    assert compiled.lru(a) == python.lru(a) == ([1, 2, 3] if capacity > 0 else [3])


def test_a_capacity_that_is_not_an_int_is_refused() -> None:
    with pytest.raises(TypeError):
        BlockIndex().add(0, [1], 2.0)  # type: ignore[arg-type]


def exercise(tables: BlockIndex, owners: list[object], hashes: list[int], data: bytes) -> None:
    """Every entry point once, through its success and its error paths."""
    packed = array("Q", hashes)
    tables.add(0, hashes, 5)
    tables.add(1, packed, 2)
    tables.add(70, memoryview(packed), 3)
    tables.add(2, hashes, 1000)  # matched in full: a count past the small ints CPython shares
    tables.match(hashes, owners)
    tables.match(packed, owners)
    tables.lru(0)
    tables.held(0)
    refused: list[tuple[object, ...]] = [
        (0, [1, "x"], 3),
        (0, [2**64], 3),
        (0, 5, 3),
        (0, array("I", [1]), 3),
        (-1, hashes, 3),
        (0, hashes, "3"),
    ]
    for args in refused:
        with pytest.raises((TypeError, OverflowError, ValueError)):
            tables.add(*args)
    with pytest.raises(IndexError, match="an endpoint id without an owner"):
        tables.match(hashes, owners[:1])
    with pytest.raises(TypeError):
        tables.match(hashes, [[]] * len(owners))  # unhashable owners
    chain_hashes(data, 7, 64)
    chain_keys(data, 7, 64)
    for chain in (chain_hashes, chain_keys):
        with pytest.raises((TypeError, ValueError, OverflowError)):
            chain(data, -1, 4)
        with pytest.raises(ValueError, match="block_size must be positive"):
            chain(data, 1, 0)
    tables.remove(1)


def test_no_references_or_memory_are_leaked() -> None:
    """Reference counts of what the calls are given stay as they were, and thousands of rounds of
    every call (error paths included) on the same tables do not grow the traced heap."""
    owners: list[object] = [object() for _ in range(71)]
    hashes = [2**63 + 12345, 7, *range(2**40, 2**40 + 300)]
    data = b"x" * 1000
    tables = BlockIndex()
    watched = (owners[0], owners[70], owners, hashes, hashes[0], data)
    for _ in range(100):
        exercise(tables, owners, hashes, data)
    gc.collect()
    before = [sys.getrefcount(item) for item in watched]
    tracemalloc.start()
    try:
        for _ in range(100):
            exercise(tables, owners, hashes, data)
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            exercise(tables, owners, hashes, data)
        for _ in range(200):
            BlockIndex().add(3, hashes, 2)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(item) for item in watched] == before
    assert grown < 20_000, grown


def unmix(position: int) -> int:
    """The key the tables' unkeyed mixer (MurmurHash3's fmix64) sends to `position`: what someone
    who knows the algorithm can grind block contents towards (the chain's seed is the model name
    and the client's own cache_salt)."""
    mask = 2**64 - 1
    x = position ^ (position >> 33)
    x = (x * pow(0xC4CEB9FE1A85EC53, -1, 2**64)) & mask
    x ^= x >> 33
    x = (x * pow(0xFF51AFD7ED558CCD, -1, 2**64)) & mask
    return x ^ (x >> 33)


def test_keys_aimed_at_one_table_slot_do_not_make_one_probe_chain() -> None:
    """With an unkeyed mixer and linear probing, blocks ground to share a home slot pile into one
    cluster that every later insert and lookup near it walks: quadratic time, where Python's
    dicts (perturbed probing) stay linear. The mixer is keyed per process, so aimed keys scatter
    like any others. CPU time of the same count of aimed and random keys, generous bound."""
    count = 20_000
    aimed = [unmix(i << 40) for i in range(1, count + 1)]  # all home to slot 0 unkeyed
    spread = [unmix(i) for i in range(1, count + 1)]

    def cpu(keys: list[int]) -> float:
        tables = BlockIndex()
        started = time.process_time()
        tables.add(0, keys, count)
        tables.match(keys, ["a"])
        return time.process_time() - started

    cpu(spread)  # warm
    baseline = min(cpu(spread) for _ in range(3))
    seconds = cpu(aimed)
    assert seconds < 20 * baseline + 0.05, (seconds, baseline)
