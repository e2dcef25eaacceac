"""Which endpoints probably hold which prompt blocks in their KV cache.

Per endpoint an LRU of block hashes (what the EPP sent it recently, bounded like the engine's
cache), plus a reverse map block -> holders so a lookup costs one probe per block however many
endpoints there are. Two implementations of the same semantics, operation for operation:

- `CompiledPrefixIndex` keeps the tables in C (`_blockindex.c`, built at install): unboxed 64-bit
  keys in open-addressing tables and one intrusive node per (block, endpoint) pair. A Python
  index's cost is cache misses on per-block objects (dict entries, boxed keys, `OrderedDict`
  nodes); this one touches a few small records per block.
- `PythonPrefixIndex`, used when the extension was not built (no C compiler at install): dicts and
  an `OrderedDict` per endpoint, holders as a bitmask per block (a set per block made every full
  garbage collection crawl), the bulk work in C-level `map`/`filter` over dict methods.

`new_prefix_index()` gives the compiled one when it is there."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from itertools import compress, islice, repeat

from epp.compiled import warn_python_fallback
from epp.datastore import Endpoint

PREFIX_INDEX = "the approximate prefix index"

try:
    from epp.scheduling.prefix._blockindex import BlockIndex

    COMPILED = True
except ImportError:  # built without a C compiler
    COMPILED = False


def _consume(iterator: Iterable[object]) -> None:
    deque(iterator, maxlen=0)


class PrefixIndex(ABC):
    """The index's interface and its endpoint bookkeeping: endpoints as small integer ids (a bit of
    a holder mask, a slot of the C tables), reused once an endpoint is removed; `rekey` hands an id
    to another endpoint."""

    def __init__(self) -> None:
        self._bits: dict[Endpoint, int] = {}  # endpoint -> its id, in order of first add
        self._owners: list[Endpoint | None] = []  # id -> endpoint
        self._free_bits: list[int] = []

    @abstractmethod
    def match(self, hashes: Sequence[int]) -> dict[Endpoint, int]:
        """Matched blocks per endpoint, GIE's way: walk the blocks in order until one nobody holds,
        counting for every endpoint each walked block it holds (in order of the first block each
        holds, then by id)."""

    @abstractmethod
    def add(self, endpoint: Endpoint, hashes: Sequence[int], capacity: int) -> None:
        """Record that `endpoint` now holds these blocks, as its most recently used (blocks it
        already held are refreshed first, new ones appended after, each group in prompt order),
        then evict its least recently used blocks beyond `capacity`."""

    @abstractmethod
    def size(self) -> int:
        """Distinct blocks indexed (the `inference_extension_prefix_indexer_size` gauge)."""

    @abstractmethod
    def lru(self, endpoint: Endpoint) -> list[int]:
        """The blocks `endpoint` holds, least recently used first."""

    @abstractmethod
    def _held(self, index: int) -> int:
        """Blocks held by the endpoint with this id."""

    @abstractmethod
    def _forget(self, index: int) -> None:
        """Drop everything the endpoint with this id holds."""

    def remove_endpoint(self, endpoint: Endpoint) -> None:
        index = self._bits.pop(endpoint, None)
        if index is None:
            return
        self._forget(index)
        self._owners[index] = None
        self._free_bits.append(index)

    def rekey(self, old: Endpoint, new: Endpoint) -> None:
        """What `old` holds is held by `new` from now on (`new` takes its place in the index)."""
        index = self._bits.pop(old, None)
        if index is None:
            return
        self.remove_endpoint(new)
        self._bits[new] = index
        self._owners[index] = new

    def endpoints(self) -> list[Endpoint]:
        return list(self._bits)

    def blocks_held(self, endpoint: Endpoint) -> int:
        index = self._bits.get(endpoint)
        return 0 if index is None else self._held(index)

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


class CompiledPrefixIndex(PrefixIndex):
    """The tables in C; hashes must be unsigned 64-bit ints (block hashes are xxh64 values). 64
    endpoints, 16 KB prompts, full index: see docs/scheduling.md, Performance."""

    def __init__(self) -> None:
        super().__init__()
        if not COMPILED:
            raise RuntimeError("epp.scheduling.prefix._blockindex was not built (make install)")
        self._tables = BlockIndex()

    def match(self, hashes: Sequence[int]) -> dict[Endpoint, int]:
        return self._tables.match(hashes, self._owners)

    def add(self, endpoint: Endpoint, hashes: Sequence[int], capacity: int) -> None:
        self._tables.add(self._bit(endpoint), hashes, capacity)

    def size(self) -> int:
        return self._tables.size()

    def lru(self, endpoint: Endpoint) -> list[int]:
        index = self._bits.get(endpoint)
        return [] if index is None else self._tables.lru(index)

    def _held(self, index: int) -> int:
        return self._tables.held(index)

    def _forget(self, index: int) -> None:
        self._tables.remove(index)


class PythonPrefixIndex(PrefixIndex):
    """The tables as Python dicts: one `OrderedDict` LRU per endpoint id and a holder bitmask per
    block."""

    def __init__(self) -> None:
        super().__init__()
        self._lrus: dict[int, OrderedDict[int, None]] = {}  # endpoint id -> its LRU
        self._holders: dict[int, int] = {}  # block hash -> bitmask of holding endpoints

    def match(self, hashes: Sequence[int]) -> dict[Endpoint, int]:
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
        index = self._bit(endpoint)
        lru = self._lrus.get(index)
        if lru is None:
            lru = self._lrus[index] = OrderedDict()
        bit = 1 << index
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

    def size(self) -> int:
        return len(self._holders)

    def lru(self, endpoint: Endpoint) -> list[int]:
        index = self._bits.get(endpoint)
        return list(self._lrus.get(index, ())) if index is not None else []

    def _held(self, index: int) -> int:
        lru = self._lrus.get(index)
        return len(lru) if lru is not None else 0

    def _forget(self, index: int) -> None:
        lru = self._lrus.pop(index, None)
        if lru:
            self._release(list(lru), 1 << index)

    def _release(self, blocks: list[int], bit: int) -> None:
        """Clear `bit` from these blocks: one pop each, re-adding only blocks someone else holds."""
        holders = self._holders
        remaining = list(map((~bit).__and__, map(holders.pop, blocks)))
        holders.update(compress(zip(blocks, remaining, strict=True), remaining))


def new_prefix_index() -> PrefixIndex:
    """The compiled index when the extension was built, else the pure-Python one (said once a
    process, since routing stays the same and only its cost per decision rises)."""
    if COMPILED:
        return CompiledPrefixIndex()
    warn_python_fallback(PREFIX_INDEX, "about 3x the CPU per decision")
    return PythonPrefixIndex()
