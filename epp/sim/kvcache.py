"""Paged KV-cache blocks with vLLM-style automatic prefix caching.

A prompt's full blocks are named by chained hashes (each block's token ids hashed with its parent's
hash as the seed; the chain starts from a hash of the model or LoRA adapter name, so different
adapters never share blocks). A resident hashed block is either referenced by requests (pinned) or
cached-but-unused; unused ones are evicted least-recently-freed first when a new block is needed.
Every full block is cached, prompt or generated tokens alike, and so is a duplicate: a block whose
hash another resident block already has (a request that computed a prefix while another cached
it, or the last block of a fully cached prompt, recomputed for its logits). vLLM does not
de-duplicate, so block tables stay append-only (vllm/v1/core/block_pool.py, BlockHashToBlockMap,
read at c59cb79): both copies stay cached, a lookup finds the one cached first, and evicting
either sends a BlockRemoved of the hash while the other stays. Only a block that is not full (a
prompt's or an answer's partial tail) is private. A freed private block is reused before any
cached block is evicted, as in vLLM, whose free_blocks puts a freed block without a hash at the
head of its free queue and a cached one at the tail (vllm-project/vllm#42656, May 2026; before it
both went to the tail in one order of release).

Nothing here allocates per-token objects, and free capacity is a counter rather than a list of
every block, so a thousand engines with tens of thousands of blocks each stay cheap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from epp.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


class BlockTable:
    """The blocks one request (or one prefill lease) holds: every block id in sequence order, and
    the ids of those that are cache blocks (hashed) it holds a reference on.

    ``held_first`` stays True while the held blocks are exactly the first ``len(held)`` ids, in
    order (a prefix hit, then promotions in order: always, as the engine caches), so ``release``
    can take the private blocks as the tail of ``ids``."""

    __slots__ = ("held", "held_first", "ids")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.held: list[int] = []
        self.held_first = True


class BlockPool:
    """Fixed number of blocks shared by pinned, cached-unused and private blocks.

    A cached block has a hash (``_hash_of``); a lookup by hash finds the block cached first
    (``_by_hash``), its duplicates wait in ``_twins`` in the order they were cached and take its
    place when it is evicted, as vLLM's BlockHashToBlockMap gives the first of a hash's blocks. A
    cached block is either in the eviction order (held by nobody), or pinned: by one table, or by
    several, whose count ``_shared`` keeps. Most pinned blocks have one holder, so caching a
    chunk's blocks is two dictionary updates and releasing a table moves its cached blocks to the
    eviction order without a reference count to update for each.

    The eviction order is kept as the releases that freed the blocks, oldest first: each with the
    block ids it freed (evicted from the end, as vLLM frees a table's blocks in reverse) and its
    number, which ``_evictable`` records per block. A block pinned again, or freed again by a later
    release, is skipped where the number no longer matches. Freeing a table is then a plain
    dictionary update and one append, where an ordered dictionary linked a node per block."""

    def __init__(self, num_blocks: int, block_size: int, record_events: bool = False) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._fresh = 0  # blocks handed out at least once (ids from 1: 0 is vLLM's null block)
        self._free_ids: list[int] = []
        self._by_hash: dict[int, int] = {}  # cached block hash -> the block id cached first
        self._twins: dict[int, list[int]] = {}  # hash -> its later blocks, in caching order
        self._hash_of: dict[int, int] = {}  # cached block id -> its hash
        self._shared: dict[int, int] = {}  # cached block id -> holders, when more than one
        self._evictable: dict[int, int] = {}  # cached-unused block id -> the release that freed it
        self._released: deque[tuple[int, list[int]]] = deque()  # (release, blocks freed): oldest first
        self._releases = 0
        self._queued = 0  # block ids in _released, stale ones included (bounded by compaction)
        self.events: list[KVEvent] | None = [] if record_events else None

    def num_free(self) -> int:
        """Blocks a new allocation can get, counting cached-unused blocks that can be evicted."""
        return self.num_blocks - self._fresh + len(self._free_ids) + len(self._evictable)

    def num_free_without_eviction(self) -> int:
        """Blocks a new allocation can get without evicting a cached block."""
        return self.num_blocks - self._fresh + len(self._free_ids)

    def num_in_use(self) -> int:
        """Blocks held by requests or leases (vLLM's "used" for KV-cache usage)."""
        return self.num_blocks - self.num_free()

    def num_cached(self) -> int:
        """Resident hashed blocks, pinned or not (duplicates included)."""
        return len(self._hash_of)

    def match(self, hashes: Sequence[int], limit: int) -> tuple[int, int]:
        """Length of the longest resident prefix of ``hashes`` (at most ``limit`` blocks), and how
        many of those are currently unused (taking them reduces free capacity)."""
        by_hash, evictable = self._by_hash, self._evictable
        hit = unused = 0
        for h in hashes[:limit]:
            block = by_hash.get(h)
            if block is None:
                break
            hit += 1
            if block in evictable:
                unused += 1
        return hit, unused

    def acquire(self, table: BlockTable, hashes: Sequence[int]) -> None:
        """Reference resident blocks ``hashes`` (a prefix hit) and append them to ``table``."""
        if not hashes:
            return
        by_hash, evictable, shared = self._by_hash, self._evictable, self._shared
        ids, held = table.ids, table.held
        if len(ids) != len(held):
            table.held_first = False
        for h in hashes:
            block = by_hash[h]
            if evictable.pop(block, None) is None:  # it was not unused: one more holder
                shared[block] = shared.get(block, 1) + 1
            ids.append(block)
            held.append(block)

    def allocate(self, table: BlockTable, count: int) -> None:
        """Append ``count`` private blocks to ``table``; the caller checked ``num_free()``.
        Freed blocks come first (last freed first: vLLM prepends them to its free queue, a table's
        tail at the head), then never-used ones, then evicted cached ones."""
        ids, free = table.ids, self._free_ids
        if count == 1 and free:  # a decoding request's next block, usually
            ids.append(free.pop())
            return
        if free and count:
            take = min(count, len(free))
            ids += reversed(free[-take:])
            del free[-take:]
            count -= take
        if count and self._fresh < self.num_blocks:
            take = min(count, self.num_blocks - self._fresh)
            ids += range(self._fresh + 1, self._fresh + 1 + take)  # id 0: vLLM's null block
            self._fresh += take
            count -= take
        for _ in range(count):
            ids.append(self._evict())

    def _evict(self) -> int:
        evictable, released = self._evictable, self._released
        while True:
            release, blocks = released[0]
            while blocks:
                victim = blocks.pop()
                self._queued -= 1
                if evictable.get(victim) == release:
                    del evictable[victim]
                    break
            else:
                released.popleft()
                continue
            if not blocks:
                released.popleft()
            break
        block_hash = self._hash_of.pop(victim)
        twins = self._twins.get(block_hash)
        if twins is None:
            del self._by_hash[block_hash]
        else:  # a duplicate stays cached: the first of the others is what lookups find now
            if self._by_hash[block_hash] == victim:
                self._by_hash[block_hash] = twins.pop(0)
            else:
                twins.remove(victim)
            if not twins:
                del self._twins[block_hash]
        if self.events is not None:
            self.events.append(BlockRemoved([block_hash]))
        return victim

    def promote(self, table: BlockTable, first: int, hashes: Sequence[int]) -> None:
        """Make private blocks ``table.ids[first:first + len(hashes)]`` cache blocks under
        ``hashes``, in order. A hash another block already has is cached all the same, as a
        duplicate that lookups find once the blocks cached before it are evicted."""
        by_hash = self._by_hash
        ids, held = table.ids, table.held
        if first != len(held):
            table.held_first = False
        blocks = ids[first : first + len(hashes)]
        self._hash_of.update(zip(blocks, hashes, strict=True))
        held += blocks
        if by_hash.keys().isdisjoint(hashes):  # no duplicate (a request's chained hashes differ)
            by_hash.update(zip(hashes, blocks, strict=True))
            return
        twins = self._twins
        for block_hash, block in zip(hashes, blocks, strict=True):
            if block_hash in by_hash:
                twins.setdefault(block_hash, []).append(block)
            else:
                by_hash[block_hash] = block

    def record_stored(
        self,
        hashes: list[int],
        parent: int | None,
        token_ids: list[int],
        lora_name: str | None,
        extra_keys: list[Any] | None = None,
    ) -> None:
        if self.events is not None:
            self.events.append(BlockStored(hashes, parent, token_ids, lora_name, extra_keys=extra_keys))

    def release(self, table: BlockTable) -> None:
        """Give back every block of ``table``: shared blocks whose last reference goes become
        cached-unused (tail blocks first in eviction order, as vLLM frees in reverse), private
        blocks become free."""
        evictable, shared = self._evictable, self._shared
        held = table.held
        if shared and not shared.keys().isdisjoint(held):
            freed = []
            for block in reversed(held):
                count = shared.get(block)
                if count is None:
                    freed.append(block)
                elif count == 2:
                    del shared[block]
                else:
                    shared[block] = count - 1
            freed.reverse()  # evicted from the end
        else:  # this table was the only holder of each of its cached blocks
            freed = held
        if freed:
            self._releases += 1
            release = self._releases
            for block in reversed(freed):
                evictable[block] = release
            self._released.append((release, freed))  # the table gets a new list below
            self._queued += len(freed)
            if self._queued > 2 * len(evictable) + 1024:
                self._compact()
        if table.held_first:
            self._free_ids += table.ids[len(held) :]
        else:
            pinned = set(held)
            self._free_ids.extend(b for b in table.ids if b not in pinned)
        table.ids = []
        table.held = []
        table.held_first = True

    def clear_cache(self) -> bool:
        """Forget every cached-but-unused block (vLLM's reset_prefix_cache). Refused (False) while
        any block is held, because held blocks cannot be dropped."""
        if self.num_in_use():
            return False
        self._by_hash.clear()
        self._twins.clear()
        self._hash_of.clear()
        self._evictable.clear()
        self._released.clear()
        self._queued = 0
        self._fresh = 0
        self._free_ids.clear()
        if self.events is not None:
            self.events.append(AllBlocksCleared())
        return True

    def _compact(self) -> None:
        """Drop the stale entries of the eviction order: the live ones, in order, become one
        release (memory stays within a few times the number of cached-unused blocks)."""
        self._releases += 1
        release = self._releases
        order = list(self._evictable)
        self._evictable = dict.fromkeys(order, release)
        order.reverse()
        self._released = deque([(release, order)])
        self._queued = len(order)

    def drain_events(self) -> list[KVEvent]:
        """KV events recorded since the last drain (empty when recording is off)."""
        if not self.events:
            return []
        events, self.events = self.events, []
        return events
