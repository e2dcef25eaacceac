"""Paged KV-cache blocks with vLLM-style automatic prefix caching.

A prompt's full blocks are named by chained hashes (each block's token ids hashed with its parent's
hash as the seed; the chain starts from a hash of the model or LoRA adapter name, so different
adapters never share blocks). A resident hashed block is either referenced by requests (pinned) or
cached-but-unused; unused ones are evicted least-recently-freed first when a new block is needed.
Blocks nobody can share (the partial tail of a prompt, generated tokens, duplicates) are private.
A freed private block is reused before any cached block is evicted, as in vLLM, whose free_blocks
puts a freed block without a hash at the head of its free queue and a cached one at the tail
(vllm-project/vllm#42656, May 2026; before it both went to the tail in one order of release).

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
    the hashes of those that are shared cache blocks it holds a reference on.

    ``held_first`` stays True while the held blocks are exactly the first ``len(held)`` ids, in
    order (a prefix hit, then promotions without a duplicate in between: nearly always), so
    ``release`` can take the private blocks as the tail of ``ids``."""

    __slots__ = ("held", "held_first", "ids")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.held: list[int] = []
        self.held_first = True


class BlockPool:
    """Fixed number of blocks shared by pinned, cached-unused and private blocks.

    Cached blocks are known by hash. One is either in the eviction order (held by nobody), or
    pinned: by one table, or by several, whose count ``_shared`` keeps. Most pinned blocks have one
    holder, so caching a chunk's blocks is one dictionary update and releasing a table moves its
    cached blocks to the eviction order without a reference count to update for each.

    The eviction order is kept as the releases that freed the blocks, oldest first: each with the
    hashes it freed (evicted from the end, as vLLM frees a table's blocks in reverse) and its
    number, which ``_evictable`` records per hash. A hash pinned again, or freed again by a later
    release, is skipped where the number no longer matches. Freeing a table is then a plain
    dictionary update and one append, where an ordered dictionary linked a node per block."""

    def __init__(self, num_blocks: int, block_size: int, record_events: bool = False) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._fresh = 0  # blocks handed out at least once (ids from 1: 0 is vLLM's null block)
        self._free_ids: list[int] = []
        self._by_hash: dict[int, int] = {}  # cached block hash -> block id
        self._shared: dict[int, int] = {}  # cached block hash -> holders, when more than one
        self._evictable: dict[int, int] = {}  # cached-unused hash -> the release that freed it
        self._released: deque[tuple[int, list[int]]] = deque()  # (release, hashes freed): oldest first
        self._releases = 0
        self._queued = 0  # hashes in _released, stale ones included (bounded by compaction)
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
        """Resident hashed blocks, pinned or not."""
        return len(self._by_hash)

    def match(self, hashes: Sequence[int], limit: int) -> tuple[int, int]:
        """Length of the longest resident prefix of ``hashes`` (at most ``limit`` blocks), and how
        many of those are currently unused (taking them reduces free capacity)."""
        by_hash, evictable = self._by_hash, self._evictable
        hit = unused = 0
        for h in hashes[:limit]:
            if h not in by_hash:
                break
            hit += 1
            if h in evictable:
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
            if evictable.pop(h, None) is None:  # it was not unused: one more holder
                shared[h] = shared.get(h, 1) + 1
            ids.append(by_hash[h])
            held.append(h)

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
            release, hashes = released[0]
            while hashes:
                victim = hashes.pop()
                self._queued -= 1
                if evictable.get(victim) == release:
                    del evictable[victim]
                    break
            else:
                released.popleft()
                continue
            if not hashes:
                released.popleft()
            break
        if self.events is not None:
            self.events.append(BlockRemoved([victim]))
        return self._by_hash.pop(victim)

    def promote(self, table: BlockTable, first: int, hashes: Sequence[int]) -> list[int]:
        """Make private blocks ``table.ids[first:first + len(hashes)]`` shared cache blocks under
        ``hashes``, in order. Returns the indices whose hash another block already caches: those
        duplicates stay private (usually none, hence one call for a whole chunk). vLLM caches a
        duplicate too (it does not de-duplicate, so block tables stay append-only): its hash is in
        that chunk's BlockStored, and its eviction sends a BlockRemoved of the hash while the
        other copy stays; docs/simulator.md states the difference."""
        by_hash = self._by_hash
        ids, held = table.ids, table.held
        if by_hash.keys().isdisjoint(hashes):  # no duplicate (a prompt's chained hashes differ)
            if first != len(held):
                table.held_first = False
            by_hash.update(zip(hashes, ids[first : first + len(hashes)], strict=True))
            held += hashes
            return []
        held_first = table.held_first
        duplicates: list[int] = []
        for index, block_hash in enumerate(hashes, first):
            if block_hash in by_hash:
                duplicates.append(index)
                continue
            if held_first and index != len(held):
                held_first = table.held_first = False
            by_hash[block_hash] = ids[index]
            held.append(block_hash)
        return duplicates

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
            for h in reversed(held):
                count = shared.get(h)
                if count is None:
                    freed.append(h)
                elif count == 2:
                    del shared[h]
                else:
                    shared[h] = count - 1
            freed.reverse()  # evicted from the end
        else:  # this table was the only holder of each of its cached blocks
            freed = held
        if freed:
            self._releases += 1
            release = self._releases
            for h in reversed(freed):
                evictable[h] = release
            self._released.append((release, freed))  # the table gets a new list below
            self._queued += len(freed)
            if self._queued > 2 * len(evictable) + 1024:
                self._compact()
        if table.held_first:
            self._free_ids += table.ids[len(held) :]
        else:
            by_hash = self._by_hash
            pinned = {by_hash[h] for h in held}
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
