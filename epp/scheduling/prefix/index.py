"""Which endpoints probably hold which prompt blocks in their KV cache.

Per endpoint an LRU of block hashes (what the EPP sent it recently, bounded like the engine's
cache), plus a reverse map block -> holders so a lookup costs one dict probe per block however many
endpoints there are. Holders are a bitmask (one bit per endpoint): with ~10^6 blocks indexed, a set
per block cost most of the scheduling time and made every full garbage collection crawl, while
ints are cheap and untracked. The bulk work runs in C (map/filter over dict methods); Python-level
loops are left only where a bit has to be picked apart."""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from itertools import compress, islice, repeat

from epp.datastore import Endpoint


def _consume(iterator: Iterable[object]) -> None:
    deque(iterator, maxlen=0)


class PrefixIndex:
    def __init__(self) -> None:
        self._lrus: dict[Endpoint, OrderedDict[int, None]] = {}
        self._holders: dict[int, int] = {}  # block hash -> bitmask of holding endpoints
        self._bits: dict[Endpoint, int] = {}  # endpoint -> its bit index
        self._owners: list[Endpoint | None] = []  # bit index -> endpoint
        self._free_bits: list[int] = []

    def match(self, hashes: Sequence[int]) -> dict[Endpoint, int]:
        """Matched blocks per endpoint, GIE's way: walk the blocks in order until one nobody holds,
        counting for every endpoint each walked block it holds."""
        masks = list(map(self._holders.get, hashes, repeat(0)))
        try:
            walked = masks.index(0)
        except ValueError:
            walked = len(masks)
        del masks[walked:]
        counts: dict[Endpoint, int] = {}
        owners = self._owners
        for mask, blocks in Counter(masks).items():  # few distinct holder sets, however long the walk
            while mask:
                lowest = mask & -mask
                owner = owners[lowest.bit_length() - 1]
                assert owner is not None
                counts[owner] = counts.get(owner, 0) + blocks
                mask ^= lowest
        return counts

    def add(self, endpoint: Endpoint, hashes: Sequence[int], capacity: int) -> None:
        """Record that `endpoint` now holds these blocks, as its most recently used (blocks it
        already held are refreshed first, new ones appended after, each group in prompt order),
        then evict its least recently used blocks beyond `capacity`."""
        lru = self._lrus.get(endpoint)
        if lru is None:
            lru = self._lrus[endpoint] = OrderedDict()
        bit = 1 << self._bit(endpoint)
        held = list(map(lru.__contains__, hashes))
        _consume(map(lru.move_to_end, compress(hashes, held)))
        new = list(compress(hashes, map(False.__eq__, held)))
        if new:
            holders = self._holders
            lru.update(zip(new, repeat(None)))
            holders.update(zip(new, map(bit.__or__, map(holders.get, new, repeat(0))), strict=True))
        excess = len(lru) - max(capacity, 1)
        if excess > 0:
            oldest = list(islice(lru, excess))
            _consume(map(lru.__delitem__, oldest))
            self._release(oldest, bit)

    def remove_endpoint(self, endpoint: Endpoint) -> None:
        lru = self._lrus.pop(endpoint, None)
        index = self._bits.pop(endpoint, None)
        if index is None:
            return
        if lru:
            self._release(list(lru), 1 << index)
        self._owners[index] = None
        self._free_bits.append(index)

    def rekey(self, old: Endpoint, new: Endpoint) -> None:
        """What `old` holds is held by `new` from now on (`new` takes its place in the index)."""
        lru = self._lrus.pop(old, None)
        index = self._bits.pop(old, None)
        if index is None:
            return
        self.remove_endpoint(new)
        if lru is not None:
            self._lrus[new] = lru
        self._bits[new] = index
        self._owners[index] = new

    def _release(self, blocks: list[int], bit: int) -> None:
        """Clear `bit` from these blocks: one pop each, re-adding only blocks someone else holds."""
        holders = self._holders
        remaining = list(map((~bit).__and__, map(holders.pop, blocks)))
        holders.update(compress(zip(blocks, remaining, strict=True), remaining))

    def _bit(self, endpoint: Endpoint) -> int:
        index = self._bits.get(endpoint)
        if index is None:
            if self._free_bits:
                index = self._free_bits.pop()
                self._owners[index] = endpoint
            else:
                index = len(self._owners)
                self._owners.append(endpoint)
            self._bits[endpoint] = index
        return index

    def endpoints(self) -> list[Endpoint]:
        return list(self._lrus)

    def blocks_held(self, endpoint: Endpoint) -> int:
        lru = self._lrus.get(endpoint)
        return len(lru) if lru is not None else 0

    def size(self) -> int:
        """Distinct blocks indexed (the `inference_extension_prefix_indexer_size` gauge)."""
        return len(self._holders)
