"""Block hashing and the block pool's pin / cache / evict bookkeeping."""

from __future__ import annotations

import random
from collections import OrderedDict

from epp.kvevents import AllBlocksCleared, BlockRemoved, prompt_block_hashes
from epp.sim.kvcache import BlockPool, BlockTable


def test_hashes_chain_full_blocks_only() -> None:
    tokens = list(range(50))
    hashes = prompt_block_hashes(tokens, 16, "model")
    assert len(hashes) == 3
    assert prompt_block_hashes(tokens[:32] + [999] * 16, 16, "model")[:2] == hashes[:2]
    # a change in block 0 changes every later hash (chained)
    changed = prompt_block_hashes([7, *tokens[1:]], 16, "model")
    assert all(x != y for x, y in zip(changed, hashes, strict=True))
    assert prompt_block_hashes(tokens, 16, "adapter") != hashes
    assert prompt_block_hashes(tokens, 16, "model") == hashes


def test_pool_pin_cache_and_evict_in_lru_order() -> None:
    pool = BlockPool(num_blocks=5, block_size=16, record_events=True)
    first, second = BlockTable(), BlockTable()
    pool.allocate(first, 2)
    pool.promote(first, 0, [101, 102])
    pool.allocate(second, 3)
    pool.promote(second, 0, [201, 101])  # a duplicate hash is cached too, as vLLM does
    assert (pool.num_free(), pool.num_in_use(), pool.num_cached()) == (0, 5, 4)
    first_ids = list(first.ids)
    pool.release(first)
    assert pool.num_free() == 2 and pool.match([101, 102], 2) == (2, 2)
    pool.release(second)
    assert pool.num_free() == 5 and pool.num_cached() == 4
    # re-pinning a cached block removes it from the evictable set (a lookup finds the copy
    # cached first: first's block)
    third = BlockTable()
    pool.acquire(third, [101])
    assert third.ids == first_ids[:1]
    assert pool.num_free() == 4 and pool.match([101, 102], 2) == (2, 1)
    # second's private tail block is reused first (vLLM puts hashless freed blocks at the head of
    # its free queue), then 102 (freed first, as the tail of its table), then second's copy of
    # 101, then 201: the copy's eviction sends BlockRemoved of 101, which stays cached (pinned)
    fourth = BlockTable()
    pool.allocate(fourth, 4)
    removed = [e.block_hashes for e in pool.drain_events() if isinstance(e, BlockRemoved)]
    assert removed == [[102], [101], [201]]
    assert pool.match([101], 1) == (1, 0) and pool.num_free() == 0 and pool.num_cached() == 1


def test_clear_cache_only_when_nothing_is_held() -> None:
    pool = BlockPool(num_blocks=4, block_size=16, record_events=True)
    table = BlockTable()
    pool.allocate(table, 1)
    pool.promote(table, 0, [5])
    assert not pool.clear_cache()
    pool.release(table)
    assert pool.clear_cache()
    assert pool.num_cached() == 0 and pool.num_free() == 4
    assert isinstance(pool.drain_events()[-1], AllBlocksCleared)


def test_release_frees_private_blocks_wherever_they_sit_in_the_table() -> None:
    pool = BlockPool(num_blocks=8, block_size=16)
    owner, other = BlockTable(), BlockTable()
    pool.allocate(owner, 2)
    pool.promote(owner, 0, [1, 2])
    pool.allocate(other, 3)
    # blocks cached out of order: the held blocks are not a prefix of the table
    pool.promote(other, 1, [7, 8])
    assert not other.held_first
    private = other.ids[0]
    pool.release(other)
    assert pool.num_free() == 6 and pool.num_cached() == 4
    # the private block, ahead of the never-used ones and of every cached one, is the next reused
    fresh = BlockTable()
    pool.allocate(fresh, 1)
    assert fresh.ids == [private] and pool.num_cached() == 4


def test_a_private_block_freed_later_is_reused_before_a_cached_block_freed_first() -> None:
    """vLLM's free_blocks (since vllm-project/vllm#42656) puts a freed block without a hash at the
    head of the free queue and a cached one at the tail, so every freed private block is reused
    before any cached block is evicted, whenever either was freed."""
    pool = BlockPool(num_blocks=4, block_size=16, record_events=True)
    cached, private = BlockTable(), BlockTable()
    pool.allocate(cached, 2)
    pool.promote(cached, 0, [11, 12])
    pool.release(cached)
    pool.allocate(private, 2)  # the two never-used blocks
    pool.release(private)
    assert pool.num_free() == 4 and pool.num_free_without_eviction() == 2
    table = BlockTable()
    pool.allocate(table, 2)
    assert not pool.drain_events() and pool.match([11, 12], 2) == (2, 2)
    pool.allocate(table, 1)  # now the cached tail goes
    assert [e.block_hashes for e in pool.drain_events() if isinstance(e, BlockRemoved)] == [[12]]
    assert pool.num_free() == 1 and pool.num_free_without_eviction() == 0


def test_a_block_held_twice_stays_pinned_until_its_last_holder_lets_go() -> None:
    pool = BlockPool(num_blocks=4, block_size=16)
    first, second = BlockTable(), BlockTable()
    pool.allocate(first, 1)
    pool.promote(first, 0, [7])
    pool.acquire(second, [7])
    assert pool.match([7], 1) == (1, 0) and pool.num_in_use() == 1
    pool.release(first)
    assert pool.match([7], 1) == (1, 0) and pool.num_in_use() == 1
    pool.release(second)
    assert pool.match([7], 1) == (1, 1) and pool.num_in_use() == 0


def test_eviction_order_survives_many_re_pinned_blocks() -> None:
    """Blocks pinned and freed again over and over leave stale places in the eviction order
    (enough to compact it several times): evictions still take the least recently freed first,
    as an ordered set of the unused blocks would give them."""
    rng = random.Random(3)
    pool = BlockPool(num_blocks=96, block_size=16, record_events=True)
    expected: OrderedDict[int, None] = OrderedDict()  # the unused cached blocks, least recent first
    cached: list[int] = []
    next_hash = 1000
    for step in range(3000):
        table = BlockTable()
        hit = [h for h in rng.sample(cached, min(len(cached), rng.randrange(0, 12))) if h in expected]
        pool.acquire(table, hit)
        for h in hit:
            del expected[h]
        fresh = rng.choice([0, 0, 0, 0, 1, 3]) if step // 400 % 2 else 0  # phases without evictions
        pool.allocate(table, fresh)
        evicted = [e.block_hashes[0] for e in pool.drain_events() if isinstance(e, BlockRemoved)]
        assert evicted == [expected.popitem(last=False)[0] for _ in evicted]
        hashes = list(range(next_hash, next_hash + fresh))
        next_hash += fresh
        pool.promote(table, len(hit), hashes)
        cached = [h for h in cached if h not in evicted] + hashes
        pool.release(table)
        for h in reversed(hit + hashes):
            expected[h] = None
        assert pool.num_free() == 96 and pool.match(list(expected), len(expected))[1] == len(expected)


def test_blocks_are_handed_out_in_vllm_free_queue_order() -> None:
    """Against a model of vLLM's free-block queue (one list of every free block, never-used ones
    first; a released table's blocks in reverse, those without a hash put at the head and the
    cached ones appended at the tail, as vLLM's free_blocks does since vllm-project/vllm#42656; a
    new block taken from the head and its hash evicted then): random tables of prefix hits, new
    cached blocks and private tail blocks, held and released in random order, evict the same
    hashes in the same order."""
    rng = random.Random(11)
    pool = BlockPool(num_blocks=64, block_size=16, record_events=True)
    queue: list[int | None] = [None] * 64  # vLLM's free queue: a cached block's hash, or None
    holders: dict[int, int] = {}  # resident hash -> tables holding it
    live: list[tuple[BlockTable, list[int], int]] = []  # (table, hashes held, private blocks)
    next_hash, evictions = 1, 0
    for _ in range(4000):
        if live and (rng.random() < 0.5 or len(live) > 6):
            table, hashes, private = live.pop(rng.randrange(len(live)))
            pool.release(table)
            for h in reversed(hashes):
                holders[h] -= 1
                if not holders[h]:
                    queue.append(h)
            queue[:0] = [None] * private
            continue
        hit = rng.sample(list(holders), min(len(holders), rng.randrange(0, 4)))
        new, private = rng.randrange(0, 5), rng.randrange(0, 3)
        unused = sum(1 for h in hit if holders[h] == 0)
        if new + private + unused > pool.num_free():
            continue
        table = BlockTable()
        pool.acquire(table, hit)
        for h in hit:
            if holders[h] == 0:
                queue.remove(h)
            holders[h] += 1
        pool.allocate(table, new + private)
        evicted = [e.block_hashes[0] for e in pool.drain_events() if isinstance(e, BlockRemoved)]
        expected = [h for h in queue[: new + private] if h is not None]
        del queue[: new + private]
        for h in expected:
            del holders[h]
        assert evicted == expected
        evictions += len(evicted)
        hashes = list(range(next_hash, next_hash + new))
        next_hash += new
        pool.promote(table, len(hit), hashes)
        holders.update(dict.fromkeys(hashes, 1))
        live.append((table, hit + hashes, private))
        assert pool.num_free() == len(queue)
        assert pool.num_free_without_eviction() == next(
            (i for i, h in enumerate(queue) if h is not None), len(queue)
        )
    assert evictions > 500


def test_duplicates_are_cached_and_evicted_as_in_vllms_block_pool() -> None:
    """Against a model of vLLM's block pool at the block level (its free queue of block ids, a
    hash's blocks in the order they were cached with lookups taking the first, as
    BlockHashToBlockMap does; a duplicate cached like any block): tables that hit, cache new
    blocks under hashes other blocks may already have, and keep private tails, released in
    random order, evict the same hashes in the same order, and every lookup finds as much."""
    rng = random.Random(5)
    pool = BlockPool(num_blocks=48, block_size=16, record_events=True)
    queue: list[int] = list(range(1, 49))  # vLLM's free queue (block 0 is its null block)
    hash_of: dict[int, int] = {}
    blocks_of: dict[int, list[int]] = {}  # hash -> its cached blocks, in caching order
    refs = dict.fromkeys(queue, 0)
    live: list[tuple[BlockTable, list[int]]] = []
    next_hash, duplicates, evictions = 1, 0, 0
    for _ in range(4000):
        if live and (rng.random() < 0.5 or len(live) > 6):
            table, ids = live.pop(rng.randrange(len(live)))
            pool.release(table)
            for b in ids:
                refs[b] -= 1
            freed = [b for b in reversed(ids) if not refs[b]]
            queue[:0] = [b for b in freed if b not in hash_of]
            queue += [b for b in freed if b in hash_of]
            continue
        hit = rng.sample(list(blocks_of), min(len(blocks_of), rng.randrange(0, 4)))
        new, private = rng.randrange(0, 5), rng.randrange(0, 3)
        touched = [blocks_of[h][0] for h in hit]
        if new + private + sum(1 for b in touched if not refs[b]) > pool.num_free():
            continue
        assert pool.match(hit, len(hit))[0] == len(hit)
        table = BlockTable()
        pool.acquire(table, hit)
        assert table.ids == touched
        for b in touched:
            if not refs[b]:
                queue.remove(b)
            refs[b] += 1
        pool.allocate(table, new + private)
        taken, queue = queue[: new + private], queue[new + private :]
        expected = []
        for b in taken:
            refs[b] = 1
            if b in hash_of:
                h = hash_of.pop(b)
                blocks_of[h].remove(b)
                if not blocks_of[h]:
                    del blocks_of[h]
                expected.append(h)
        evicted = [e.block_hashes[0] for e in pool.drain_events() if isinstance(e, BlockRemoved)]
        assert evicted == expected and table.ids[len(hit) :] == taken
        evictions += len(evicted)
        hashes = []
        for _ in range(new):  # now and then the hash of a block cached already: a duplicate
            if blocks_of and rng.random() < 0.3:
                hashes.append(rng.choice(list(blocks_of)))
                duplicates += hashes[-1] not in hashes[:-1]
            else:
                hashes.append(next_hash)
                next_hash += 1
        if len(set(hashes)) != len(hashes):
            hashes = list(dict.fromkeys(hashes))
        pool.promote(table, len(hit), hashes)
        for b, h in zip(taken, hashes, strict=False):
            hash_of[b] = h
            blocks_of.setdefault(h, []).append(b)
        live.append((table, touched + taken))
        assert pool.num_free() == len(queue) and pool.num_cached() == len(hash_of)
    assert evictions > 500 and duplicates > 300
