"""Prompt -> chained block hashes, as GIE's approximate prefix cache cuts prompts.

A block is `block_tokens` tokens; for text that is `block_tokens * 4` bytes (GIE's 4 characters per
token), for token-id prompts `block_tokens` little-endian uint32 ids (also 4 bytes each). Each
block's hash depends on every block before it, so equal hashes mean equal prefixes. The chain
starts from a seed of the model name and cache salt, so models and salted tenants never share.

Chaining passes the previous hash as the xxHash64 seed instead of appending its 8 bytes to the
block (GIE's byte layout): the same prefix property at half the cost, since the block is hashed as it
is, with no concatenated copy. Hash values therefore differ from
GIE's; nothing outside this process ever sees them."""

from __future__ import annotations

import struct
import sys
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from operator import itemgetter

from xxhash import xxh3_128_intdigest, xxh64_intdigest

from epp.requests import InferenceRequest
from epp.requests.types import AVERAGE_CHARS_PER_TOKEN

BYTES_PER_TOKEN_ID = 4
_first = itemgetter(0)


def model_seed(model: str, cache_salt: str = "") -> int:
    return xxh64_intdigest(f"{model}{cache_salt}".encode())


def pack_token_ids(token_ids: list[int]) -> bytes:
    """Token ids as little-endian uint32s; ids outside that range (never real) give no bytes, so
    such a request simply matches nothing."""
    try:
        packed = array("I", token_ids)
    except OverflowError:
        return b""
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def prompt_bytes(request: InferenceRequest) -> bytes:
    return pack_token_ids(request.token_ids) if request.token_ids is not None else request.prompt


def block_bytes(block_tokens: int) -> int:
    return block_tokens * AVERAGE_CHARS_PER_TOKEN


def block_hashes(data: bytes, seed: int, block_size: int, max_blocks: int) -> list[int]:
    """Chained hashes of `data` cut into `block_size`-byte blocks, at most `max_blocks` (0 = no
    limit). A trailing partial block is hashed too (GIE after v1.5); data shorter than one block
    gives nothing, as in GIE.

    The chain runs in C when the extension is built (`_blockindex.chain_hashes`); otherwise no
    Python frame runs per block: `struct.iter_unpack` cuts the full blocks in C, and the chain is
    a `map` whose seeds are read from the very list it is extending (each hash becomes the next
    block's seed). 256 blocks: 22 µs against 36 µs for a loop over memoryview slices."""
    end = _hashed_end(data, block_size, max_blocks)
    return _chain(memoryview(data)[:end], seed, block_size) if end else []


def _hashed_end(data: bytes, block_size: int, max_blocks: int) -> int:
    """How many leading bytes of `data` `block_hashes` hashes: none when it is shorter than one
    block, at most `max_blocks` blocks (0 = no limit)."""
    if len(data) < block_size:
        return 0
    return len(data) if max_blocks <= 0 else min(len(data), block_size * max_blocks)


def _python_chain(view: memoryview, seed: int, block_size: int) -> list[int]:
    """The chain over all of `view`: its full blocks, then what is left as one last block."""
    full = len(view) - len(view) % block_size
    chain = [seed]
    blocks = map(_first, struct.iter_unpack(f"{block_size}s", view[:full]))
    chain.extend(map(xxh64_intdigest, blocks, iter(chain)))
    if full < len(view):
        chain.append(xxh64_intdigest(view[full:], chain[-1]))
    del chain[0]
    return chain


try:  # the same chain in C (_blockindex.c)
    from epp.scheduling.prefix._blockindex import chain_hashes as _chain
    from epp.scheduling.prefix._blockindex import chain_keys

    COMPILED_CHAIN = True
except ImportError:  # built without a C compiler
    _chain = _python_chain
    COMPILED_CHAIN = False


def block_keys(data: bytes, seed: int, block_size: int, max_blocks: int) -> Sequence[int]:
    """`block_hashes`'s values as an `array('Q')` (needs the compiled chain): no int object per
    block, and the compiled index reads the array as it is."""
    end = _hashed_end(data, block_size, max_blocks)
    return array("Q", chain_keys(memoryview(data)[:end], seed, block_size) if end else b"")


def prompt_hasher() -> Callable[[bytes, int, int, int], Sequence[int]]:
    """The producer's prompt hashing: with the compiled chain, `block_keys` (hashing a whole
    prompt in C is cheaper than finding its remembered spans: 16 KB prompts from shared 12 KB
    prefixes 13.5 against 14.8 us, candidates_bench's prompts 4.6 against 5.9 us, as lists of
    ints; as arrays a 16 KB prompt takes 4.5-5.4 us); without it, a `ChainCache` (28.9 against
    33.8 us for the plain Python chain)."""
    return block_keys if COMPILED_CHAIN else ChainCache().block_hashes


class ChainCache:
    """`block_hashes` that remembers the chains of recently seen stretches of prompt, so prompts
    sharing a prefix (a system prompt, a conversation so far) hash it once. Prompts are cut into
    spans of `SPAN_BLOCKS` blocks from their start; a span is known by one xxh3-128 of its bytes
    (which fixes the block size too: a span is 32 blocks long) seeded with the hash before it, so
    the same bytes after another prefix are another span. The least recently used spans are
    forgotten beyond `capacity`. From the first span not remembered on, the rest of the prompt is
    one chain (later spans cannot be known after an unknown one, short of an evicted span) whose
    whole spans are then remembered.

    The values are `block_hashes`'s. Used only with the Python chain (`prompt_hasher`); with it,
    what paid most was that they are the very `int` objects the Python index stored when it first
    saw the prefix: its dict probes then find their keys by identity instead of reading the stored
    key to compare it, a cache miss per probe in a multi-million-entry index. 64 endpoints, 16 KB
    prompts, on a loaded machine: a decision 468 -> 444 µs, of which the index 338 -> 269 µs and
    hashing 25.5 -> 20.2 µs; the 69-block prompts of candidates_bench.py, where one 32-block span
    of the 62 shared is remembered, hash in 9.0 -> 9.3 µs (docs/scheduling.md, Performance)."""

    SPAN_BLOCKS = 32

    def __init__(self, capacity: int = 4096) -> None:
        self._spans: OrderedDict[int, list[int]] = OrderedDict()
        self._capacity = capacity

    def block_hashes(self, data: bytes, seed: int, block_size: int, max_blocks: int) -> list[int]:
        end = _hashed_end(data, block_size, max_blocks)
        if not end:
            return []
        view = memoryview(data)
        span_blocks = self.SPAN_BLOCKS
        span = block_size * span_blocks
        spans = self._spans
        chain: list[int] = []
        previous = seed
        start = 0
        whole = end - end % span
        while start < whole:
            key = xxh3_128_intdigest(view[start : start + span], previous)
            hashes = spans.get(key)
            if hashes is None:
                break
            spans.move_to_end(key)
            chain += hashes
            previous = hashes[-1]
            start += span
        if start == end:
            return chain
        # From the first span not remembered on: one chain, whose whole spans are remembered.
        rest = _chain(view[start:end], previous, block_size)
        if start < whole:
            spans[key] = rest[:span_blocks]
            for first in range(span_blocks, (whole - start) // block_size, span_blocks):
                offset = start + first * block_size
                key = xxh3_128_intdigest(view[offset : offset + span], rest[first - 1])
                spans.setdefault(key, rest[first : first + span_blocks])  # keep known objects
                spans.move_to_end(key)
            while len(spans) > self._capacity:
                spans.popitem(last=False)
        chain += rest
        return chain

    def __len__(self) -> int:
        """Spans remembered."""
        return len(self._spans)
