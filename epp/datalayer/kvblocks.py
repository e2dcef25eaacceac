"""The precise prefix-cache index: which pod holds which KV block, learned from the engines' own
KV events (llm-d's `kvblock.Index` with its `chunkedTokenDatabase` keys).

Block keys are computed here from token ids, the same way on both paths: a prompt's tokens when a
request is scored, and the `token_ids` of every `BlockStored` event. Engine block hashes are only
opaque names, kept per pod to find a stored block's parent key and what a `BlockRemoved` drops, so
the engine's hash function, seed and block size never need to match the EPP's.

Memory is bounded: at most `size` block keys, least recently stored or matched evicted first, each
with at most `pod_cache_size` holders; each pod's engine-hash map is bounded by `size` too. A
lookup walks the prompt's keys from the first and stops at the first key no remaining candidate
holds, so it costs the prompt's block count, not the pool size.
"""

from __future__ import annotations

import struct
import time
from abc import ABC, abstractmethod
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import fnv_c
import xxhash
from prometheus_client import CollectorRegistry

from epp.compiled import warn_python_fallback
from epp.datalayer.kvruns import KeyRuns, PinRuns, stretch
from epp.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from epp.metrics.families import Families
from epp.metrics.per_registry import PerRegistry

HASH_CBOR_FNV = "cbor-fnv"
HASH_XXH64 = "xxh64"
_NULL = b"\xf6"
MEMO_SIZE = 1 << 20
MAX_ROOTS = 1024  # root keys memoized, one per model name (names come from clients)
MAX_ROOT_NAME = 256  # characters of a model name whose root is memoized

# Cache kinds whose blocks form a prefix chain (vLLM's `kv_cache_spec_kind`); others are skipped.
PREFIX_KINDS = frozenset({"full_attention", "mla_attention", "sink_full_attention"})


fnv1a64: Callable[[bytes], int] = fnv_c.fnv1a_64
"""FNV-1a-64 with the standard offset basis, in C: a prompt's uncached blocks are hashed per
request, and the byte loop in Python cost about 15 us a block."""

BLOCK_KEYS = "the precise prefix index's block keys"

try:  # the whole `cbor-fnv` chain in C (_blockkeys.c): no memo probe or CBOR join per block
    from epp.datalayer._blockkeys import cbor_fnv_keys as _compiled_cbor_fnv_keys
except ImportError:  # built without a C compiler: the chain below, memoised
    _compiled_cbor_fnv_keys = None  # type: ignore[assignment]


def _cbor_uint(value: int, major: int = 0) -> bytes:
    """A canonical (shortest) CBOR head for an unsigned value of major type `major`."""
    top = major << 5
    if value < 24:
        return bytes((top | value,))
    if value < 0x100:
        return bytes((top | 24, value))
    if value < 0x10000:
        return bytes((top | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((top | 26,)) + value.to_bytes(4, "big")
    return bytes((top | 27,)) + value.to_bytes(8, "big")


_TOKEN_CBOR: dict[int, bytes] = {}


def _cbor_token(token: int) -> bytes:
    encoded = _TOKEN_CBOR.get(token)
    if encoded is None:
        encoded = _cbor_uint(token)
        if len(_TOKEN_CBOR) < 1 << 20:  # a vocabulary's worth
            _TOKEN_CBOR[token] = encoded
    return encoded


def _cbor_tokens(tokens: Sequence[int]) -> bytes:
    try:  # every token seen before (a vocabulary is small): one C-level pass
        body = b"".join(map(_TOKEN_CBOR.__getitem__, tokens))
    except KeyError:
        body = b"".join([_cbor_token(t) for t in tokens])
    return _cbor_uint(len(tokens), 4) + body


class TokenProcessor:
    """llm-d's `chunkedTokenDatabase`: tokens cut into `block_size` chunks (a trailing partial
    chunk has no key), each chunk's key chained on its parent's.

    `cbor-fnv` (llm-d's default): seed = FNV-1a-64(hashSeed); root = FNV-1a-64(CBOR [seed, null,
    model]); key = FNV-1a-64(CBOR [parent, [tokens], extras]) with extras null, or for a block
    carrying identifiers (multimodal hashes, cache salt) `[{"Hash": h}, ...]`. `xxh64`: seed =
    XXH64(hashSeed); root = XXH64(LE64 seed ‖ LE64 len(model) ‖ model); key = XXH64(LE64 parent ‖
    LE32 tokens ‖ (LE64 len(h) ‖ h)...)."""

    def __init__(
        self, block_size: int, hash_seed: str = "", algorithm: str = HASH_CBOR_FNV, compiled: bool = True
    ) -> None:
        """`compiled`: plain `cbor-fnv` chains run in C when the extension is built (False: always
        the Python chain, which tests compare it with)."""
        if block_size <= 0:
            raise ValueError("block size must be positive")
        if algorithm not in (HASH_CBOR_FNV, HASH_XXH64):
            raise ValueError(f"unsupported hash algorithm {algorithm!r}")
        self.block_size = block_size
        self.algorithm = algorithm
        if algorithm == HASH_XXH64:
            self._seed = xxhash.xxh64_intdigest(hash_seed.encode())
        else:
            self._seed = fnv1a64(hash_seed.encode())
        self._roots: dict[str, int] = {}
        self._compiled = _compiled_cbor_fnv_keys if compiled else None
        if compiled and algorithm == HASH_CBOR_FNV and _compiled_cbor_fnv_keys is None:
            warn_python_fallback(BLOCK_KEYS, "about 8x the CPU per prompt's block keys")
        # (parent, chunk) -> key for the Python chain, so a shared prefix is hashed once.
        self._memo: dict[int, int] = {}

    def root(self, model: str) -> int:
        root = self._roots.get(model)
        if root is None:
            encoded = model.encode()
            if self.algorithm == HASH_XXH64:
                root = xxhash.xxh64_intdigest(struct.pack("<QQ", self._seed, len(encoded)) + encoded)
            else:
                root = fnv1a64(
                    b"\x83" + _cbor_uint(self._seed) + _NULL + _cbor_uint(len(encoded), 3) + encoded
                )
            if len(model) <= MAX_ROOT_NAME:  # a longer name is a client's invention: not kept
                if len(self._roots) >= MAX_ROOTS:  # a client inventing model names: start over
                    self._roots.clear()
                self._roots[model] = root
        return root

    def keys(
        self,
        tokens: Sequence[int],
        model: str,
        parent: int | None = None,
        extras: Sequence[BlockExtras] | None = None,
    ) -> list[int]:
        """Keys of every full block of `tokens`, chained on `parent` (None: the model's root).
        `extras` (one entry per full block, None for a plain text block) are the identifiers
        vLLM folded into each block: multimodal hashes, the cache salt in block 0."""
        size = self.block_size
        count = len(tokens) // size
        if extras is not None and len(extras) != count:
            raise ValueError(f"{len(extras)} block extras for {count} blocks")
        if extras is not None and not any(extras):
            extras = None
        prefix = self.root(model) if parent is None else parent
        out: list[int] = []
        if self.algorithm == HASH_XXH64:
            digest = xxhash.xxh64_intdigest
            data = struct.pack(f"<{count * size}I", *tokens[: count * size])
            step = 4 * size
            for index, start in enumerate(range(0, count * step, step)):
                extra = _xxh_extras(extras[index]) if extras is not None else b""
                prefix = digest(prefix.to_bytes(8, "little") + data[start : start + step] + extra)
                out.append(prefix)
            return out
        if extras is not None:  # blocks keyed by more than their tokens: not memoised
            for index in range(count):
                chunk = tokens[index * size : (index + 1) * size]
                tail = _cbor_extras(block) if (block := extras[index]) else _NULL
                prefix = fnv1a64(b"\x83" + _cbor_uint(prefix) + _cbor_tokens(chunk) + tail)
                out.append(prefix)
            return out
        if self._compiled is not None:
            return self._compiled(tokens, size, prefix)  # full blocks only, read from the list in place
        memo = self._memo
        data = array("I", tokens[: count * size]).tobytes()
        step = 4 * size
        memo_key = xxhash.xxh3_64_intdigest
        for index, start in enumerate(range(0, count * step, step)):
            tag = memo_key(data[start : start + step], prefix)
            key = memo.get(tag)
            if key is None:
                chunk = tokens[index * size : (index + 1) * size]
                key = fnv1a64(b"\x83" + _cbor_uint(prefix) + _cbor_tokens(chunk) + _NULL)
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[tag] = key
            prefix = key
            out.append(key)
        return out


BlockExtras = tuple[str, ...] | None
_HASH_FIELD = b"\xa1" + _cbor_uint(4, 3) + b"Hash"


def _cbor_extras(hashes: Sequence[str]) -> bytes:
    """llm-d's `[]MMHash` as Go's canonical CBOR writes it: an array of `{"Hash": h}` maps."""
    out = [_cbor_uint(len(hashes), 4)]
    for h in hashes:
        encoded = h.encode()
        out.append(_HASH_FIELD + _cbor_uint(len(encoded), 3) + encoded)
    return b"".join(out)


def _xxh_extras(hashes: BlockExtras) -> bytes:
    """llm-d's xxh64 chain: each extra string after the tokens, prefixed by its LE64 length."""
    return b"".join(struct.pack("<Q", len(e := h.encode())) + e for h in hashes or ())


def block_extras_from_features(
    features: Iterable[tuple[int, int, str]], block_size: int, token_count: int
) -> list[BlockExtras] | None:
    """llm-d's `ComputeBlockExtraFeatures` (vLLM's `_gen_mm_extra_hash_keys`): for each full
    block, the hashes of the multimodal items (offset, length, hash) whose placeholder tokens
    overlap it, in placeholder order; None when there are no items."""
    items = sorted(features, key=lambda f: f[0])
    blocks = token_count // block_size
    if not items or block_size <= 0 or blocks <= 0:
        return None
    out: list[BlockExtras] = []
    for index in range(blocks):
        start, end = index * block_size, (index + 1) * block_size
        hashes = []
        for offset, length, item in items:
            if offset + length <= start:
                continue
            if offset >= end:
                break
            hashes.append(item)
        out.append(tuple(hashes) or None)
    return out


def fold_cache_salt(extras: list[BlockExtras] | None, salt: str, blocks: int) -> list[BlockExtras] | None:
    """llm-d's `foldCacheSalt`: the salt joins block 0's extras, after its multimodal hashes
    (vLLM puts `cache_salt` in block 0's extra keys)."""
    if not salt or blocks <= 0:
        return extras
    extras = list(extras) if extras is not None else [None] * blocks
    extras[0] = (*(extras[0] or ()), salt)
    return extras


def parse_extra_keys(raw: Sequence[Any]) -> list[BlockExtras]:
    """llm-d's `ParseRawExtraKeys`: per engine block, its string identifiers (vLLM >= 0.18) or
    the first element of `[hash, offset]` pairs (older vLLM); other entries are skipped."""
    out: list[BlockExtras] = []
    for block in raw:
        hashes: list[str] = []
        for entry in block if isinstance(block, list) else ():
            if isinstance(entry, str):
                hashes.append(entry)
            elif isinstance(entry, list | tuple) and entry and isinstance(entry[0], str):
                hashes.append(entry[0])
        out.append(tuple(hashes) or None)
    return out


# ----- metrics ------------------------------------------------------------------------------------


class KVIndexMetrics(PerRegistry):
    """llm-d's KV-cache index and KV-event metrics (`llm_d_epp_kv_cache_*`), plus the EPP's own
    counts of what it refused or resynchronised. One set per registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        f = Families(registry, prefix="llm_d_epp_", alpha=False)
        self.admissions = f.counter("kv_cache_index_admissions_total", "KV-block admissions")
        self.evictions = f.counter("kv_cache_index_evictions_total", "KV-block evictions")
        self.lookups = f.counter("kv_cache_index_lookup_requests_total", "lookup calls")
        self.lookup_hits = f.counter(
            "kv_cache_index_lookup_hits_total", "contiguous prefix blocks matched by the best pod per lookup"
        )
        self.max_pod_hits = f.counter(
            "kv_cache_index_max_pod_hit_count_total",
            "longest contiguous per-pod prefix chain observed per lookup",
        )
        self.lookup_latency = f.histogram("kv_cache_index_lookup_latency_seconds", "lookup latency")
        self.blocks = f.gauge("kv_cache_index_blocks", "block keys held by the index")
        self.messages = f.counter(
            "kv_cache_events_messages_received_total", "KV-event messages received", ["pod_identifier"]
        )
        self.zmq_errors = f.counter(
            "kv_cache_events_zmq_errors_total", "ZMQ errors", ["pod_identifier", "operation"]
        )
        self.reconnections = f.counter(
            "kv_cache_events_subscriber_reconnections_total", "subscriber reconnections", ["pod_identifier"]
        )
        self.subscribers = f.gauge("kv_cache_events_active_subscribers", "active KV-event subscribers")
        self.stores_skipped = f.counter(
            "kv_cache_events_stores_skipped_total",
            "BlockStored events that cannot be indexed",
            ["cache_kind", "reason"],
        )
        self.removals_skipped = f.counter(
            "kv_cache_events_removals_skipped_total",
            "BlockRemoved events of groups the prefix index does not follow",
            ["cache_kind", "reason"],
        )
        self.removals_suppressed = f.counter(
            "kv_cache_events_dedup_removed_hashes_suppressed_total",
            "removed block hashes the pod still holds another copy of (block hashes, not events)",
        )
        self.removals_forwarded = f.counter(
            "kv_cache_events_dedup_removed_hashes_forwarded_total",
            "removed block hashes applied to the index (block hashes, not events)",
        )
        self.dropped = f.counter(
            "kv_cache_events_dropped_total",
            "KV-event messages or events skipped (malformed, unknown tag, unknown pod)",
            ["reason"],
        )
        self.tokenization_fallbacks = f.counter(
            "tokenization_fallbacks_total",
            "requests scheduled without token ids because tokenization failed",
            ["backend", "reason"],
        )
        self.resyncs = f.counter(
            "kv_cache_events_resyncs_total",
            "pods whose blocks were dropped to resynchronise (sequence gap, publisher restart)",
            ["reason"],
        )


# ----- the index ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _EngineBlock:
    """What one engine block hash of a pod stands for: the request keys its tokens completed, the
    chain position after it (last request key and the tokens not yet forming a request block),
    and how many stores reference it (a block announced for two media is removed twice)."""

    keys: tuple[int, ...]
    chain: int
    tail: tuple[int, ...]
    tail_extras: tuple[str, ...] = ()  # identifiers of the engine blocks the tail came from
    refs: int = 1


def _as_map(holders: str | dict[str, float] | None) -> dict[str, float]:
    if holders is None:
        return {}
    return {holders: 1.0} if isinstance(holders, str) else holders


class _PodState:
    __slots__ = ("blocks", "keys")

    def __init__(self) -> None:
        self.blocks: OrderedDict[int, _EngineBlock] = OrderedDict()  # engine hash -> block
        self.keys: dict[int, int] = {}  # request key -> engine blocks completing it on this pod


DEFAULT_TIER_WEIGHTS: Mapping[str, float] = {"gpu": 1.0, "cpu": 0.8}
_PINNED = float("inf")  # a speculative entry's expiry while requests in flight pin it


class IndexOptions(TypedDict, total=False):
    """`KVBlockIndexBase`'s options after the processor (its signature holds the defaults), as a
    subclass passes them on."""

    size: int
    pod_cache_size: int
    tier_weights: Mapping[str, float]
    metrics: KVIndexMetrics | None
    confirmation_ends_speculation: bool


class KVBlockIndexBase(ABC):
    """What each pod's engine blocks stand for, learned from its KV events, and the speculative
    entries: shared by the in-memory index and the Redis one (`epp.datalayer.kvblocks_redis`),
    which differ only in where `request key -> {pod: tier weight}` is kept (`_hold`,
    `_drop_holder`, `_forget_pod`) and how it is looked up."""

    def __init__(
        self,
        processor: TokenProcessor,
        size: int = 100_000_000,
        pod_cache_size: int = 10,
        tier_weights: Mapping[str, float] = DEFAULT_TIER_WEIGHTS,
        metrics: KVIndexMetrics | None = None,
        confirmation_ends_speculation: bool = False,
    ) -> None:
        """`size` bounds each pod's engine-block map (and the in-memory index's keys);
        `confirmation_ends_speculation`: a pod's stored block ends its speculative entry for the
        block's keys, so the block's later removal shows at once (llm-d keeps it to its TTL)."""
        self.processor = processor
        self.size = size
        self.pod_cache_size = pod_cache_size
        self.tier_weights = dict(tier_weights)
        self.metrics = metrics
        self.confirmation_ends_speculation = confirmation_ends_speculation
        self._pods: dict[str, _PodState] = {}
        # pod -> KV-cache group -> its kind, learned from the pod's stores (llm-d-router's group
        # catalog): a removal names only its group, and only prefix groups' reach the index
        self._groups: dict[str, dict[int, str]] = {}
        self._unit_weights = True  # until a block is held in a tier weighing other than 1
        # Speculative entries (llm-d's speculativeIndexing): key -> {pod: expiry}, expiring in order;
        # a pinned entry's expiry is infinite until the last request pinning it ends.
        self._speculative: dict[int, dict[str, float]] = {}
        self._guessed_keys: dict[str, set[int]] = {}  # pod -> the keys it holds in `_speculative`
        self._expiries: deque[tuple[float, Sequence[int], str]] = deque()
        # pod -> {key: requests in flight pinning it} for the pinned entries (expiry infinite): a
        # key the pod pins already is counted here alone, without touching `_speculative`; kept
        # per run of keys pinned together (a group's shared prefix is one count)
        self._pins: dict[str, PinRuns] = {}
        # the same for pins whose entry ended before them (a KV event confirmed its block, the
        # pod was forgotten, `add_speculative` gave it an expiry): the last one's release is
        # still counted, and a new pin of the key starts from their count
        self._orphan_pins: dict[str, dict[int, int]] = {}

    def pods(self) -> list[str]:
        """The pods whose events this index applied (and not cleared since)."""
        return list(self._pods)

    def publishes(self, pod: str) -> bool:
        """Whether `pod` is one of `pods()` (its KV events are followed), without the list."""
        return pod in self._pods

    @abstractmethod
    def _hold(self, keys: Sequence[int], pod: str, weight: float) -> None:
        """`pod` holds `keys` in a tier weighing `weight` (a holder keeps its highest weight)."""

    @abstractmethod
    def _drop_holder(self, key: int, pod: str) -> None:
        """`pod` no longer holds `key`."""

    @abstractmethod
    def _forget_pod(self, pod: str, keys: Iterable[int]) -> None:
        """`pod` holds nothing any more; `keys` are those its applied events gave it."""

    # --- events -------------------------------------------------------------------------------

    def apply(self, pod: str, model: str, events: Iterable[KVEvent]) -> None:
        """Apply one pod's events in order; `model` is the topic's (a LoRA name overrides it)."""
        for event in events:
            if isinstance(event, BlockStored):
                self._stored(pod, model, event)
            elif isinstance(event, BlockRemoved):
                if event.group_idx is None or self._prefix_group(pod, event.group_idx):
                    self._removed(pod, event.block_hashes)
            elif isinstance(event, AllBlocksCleared):
                self.clear_pod(pod)

    def _skip(self, event: BlockStored, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.stores_skipped.labels(event.kv_cache_spec_kind or "unknown", reason).inc()

    def _prefix_group(self, pod: str, group: int) -> bool:
        """Whether a removal of `group`'s blocks reaches the index, as llm-d-router decides: the
        group's kind as the pod's stores named it. A hybrid model's sliding-window group evicts
        blocks whose hashes the full-attention group still holds; an unknown group is skipped too."""
        kind = self._groups.get(pod, {}).get(group)
        if kind in PREFIX_KINDS:
            return True
        if self.metrics is not None:
            reason = "unknown_group" if kind is None else "unsupported_cache_kind"
            self.metrics.removals_skipped.labels(kind or "unknown", reason).inc()
        return False

    def _stored(self, pod: str, model: str, event: BlockStored) -> None:
        hashes = event.block_hashes
        tokens = event.token_ids
        if not hashes:
            return
        if event.group_idx is not None:
            groups = self._groups.setdefault(pod, {})
            # A store naming no kind is indexed as full attention: its removals must reach the index.
            kind = event.kv_cache_spec_kind or groups.get(event.group_idx) or "full_attention"
            groups[event.group_idx] = kind
            if kind not in PREFIX_KINDS:
                self._skip(event, "unsupported_cache_kind")
                return
        if len(tokens) % len(hashes):
            self._skip(event, "non_dense_block_span")
            return
        extras = parse_extra_keys(event.extra_keys) if event.extra_keys else None
        if extras is not None and len(extras) != len(hashes):
            self._skip(event, "extra_keys_mismatch")
            return
        state = self._pods.get(pod)
        if state is None:
            state = self._pods[pod] = _PodState()
        weight = self.tier_weights.get((event.medium or "gpu").lower(), 1.0)
        if not tokens:  # a device-tier update (offloading): blocks this pod already announced
            for engine_hash in hashes:
                if (existing := state.blocks.get(engine_hash)) is not None:
                    existing.refs += 1
                    state.blocks.move_to_end(engine_hash)
                    self._admit(existing.keys, pod, weight, state, count=False)
            return
        per_block = len(tokens) // len(hashes)
        if event.block_size and per_block != event.block_size:
            self._skip(event, "invalid_block_size")
            return
        model = event.lora_name or model
        processor = self.processor
        if not event.parent_block_hash:  # None, or 0 as older engines write the root (as llm-d reads it)
            chain = processor.root(model)
            tail: tuple[int, ...] = ()
            tail_extras: tuple[str, ...] = ()
        else:
            parent = state.blocks.get(event.parent_block_hash)
            if parent is None:  # the parent's store was missed (or evicted from this map)
                self._skip(event, "unknown_parent")
                return
            chain, tail, tail_extras = parent.chain, parent.tail, parent.tail_extras
        size = processor.block_size
        if not tail and extras is None and self._stored_aligned(pod, model, state, weight, event, chain):
            return
        for index, engine_hash in enumerate(hashes):
            existing = state.blocks.get(engine_hash)
            if existing is not None:  # announced again (another medium): one more reference
                existing.refs += 1
                state.blocks.move_to_end(engine_hash)
                self._admit(existing.keys, pod, weight, state, count=False)
                chain, tail, tail_extras = existing.chain, existing.tail, existing.tail_extras
                continue
            own = (extras[index] or ()) if extras is not None else ()
            pending = tail + tuple(tokens[index * per_block : (index + 1) * per_block])
            full = len(pending) // size * size
            keys: tuple[int, ...] = ()
            if full:
                # llm-d's realignment: a request block made of several engine blocks carries all
                # their identifiers; one cut from a larger engine block carries that block's.
                block_extras: list[BlockExtras] = [(*tail_extras, *own) or None]
                block_extras += [own or None] * (full // size - 1)
                keys = tuple(processor.keys(pending[:full], model, chain, block_extras))
                chain = keys[-1]
                tail_extras = ()
            tail = pending[full:]
            tail_extras = (*tail_extras, *own) if tail else ()
            state.blocks[engine_hash] = _EngineBlock(keys, chain, tail, tail_extras)
            self._admit(keys, pod, weight, state, count=True)
        while len(state.blocks) > self.size:
            _, dropped = state.blocks.popitem(last=False)
            self._release(pod, state, dropped.keys)

    def _stored_aligned(
        self, pod: str, model: str, state: _PodState, weight: float, event: BlockStored, chain: int
    ) -> bool:
        """`_stored` when each engine block is one request block (the engine's block size is the
        index's, no tail pending, no extra keys) and none was announced before: the event's keys
        in one chain, held as if block by block (the same counts, confirmations and LRU order).
        False, having done nothing, when the event is not such a one."""
        hashes, tokens, blocks = event.block_hashes, event.token_ids, state.blocks
        if len(tokens) != len(hashes) * self.processor.block_size or any(map(blocks.__contains__, hashes)):
            return False
        if len(set(hashes)) != len(hashes):  # a block announced twice in the event: the second adds a ref
            return False
        keys = self.processor.keys(tokens, model, chain)
        for engine_hash, key in zip(hashes, keys, strict=True):
            blocks[engine_hash] = _EngineBlock((key,), key, ())
        if weight != 1.0:
            self._unit_weights = False
        counts = state.keys
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        speculative = self._speculative if self.confirmation_ends_speculation else None
        if speculative:
            for key in keys:
                if (guessed := speculative.get(key)) is not None and pod in guessed:
                    self._unguess(key, pod, guessed)
        self._hold_each(keys, pod, weight)
        while len(blocks) > self.size:
            _, dropped = blocks.popitem(last=False)
            self._release(pod, state, dropped.keys)
        return True

    def _hold_each(self, keys: Sequence[int], pod: str, weight: float) -> None:
        """`_hold` of each key on its own, in order (an index bounding its keys may do it in one
        call when nothing can be evicted between them)."""
        for key in keys:
            self._hold((key,), pod, weight)

    def _admit(self, keys: Sequence[int], pod: str, weight: float, state: _PodState, count: bool) -> None:
        if weight != 1.0:
            self._unit_weights = False
        speculative = self._speculative if self.confirmation_ends_speculation else None
        if count or speculative:
            for key in keys:
                if count:
                    state.keys[key] = state.keys.get(key, 0) + 1
                if speculative and (guessed := speculative.get(key)) is not None and pod in guessed:
                    self._unguess(key, pod, guessed)
        self._hold(keys, pod, weight)

    def _removed(self, pod: str, hashes: Sequence[int]) -> None:
        state = self._pods.get(pod)
        if state is None:
            return
        suppressed = 0
        for engine_hash in hashes:
            block = state.blocks.get(engine_hash)
            if block is None:
                continue
            block.refs -= 1
            if block.refs > 0:  # another store of it stands (a duplicate block, another medium)
                suppressed += 1
                continue
            del state.blocks[engine_hash]
            self._release(pod, state, block.keys)
        if self.metrics is not None:  # as llm-d-router's dedup filter counts them
            if suppressed:
                self.metrics.removals_suppressed.inc(suppressed)
            if forwarded := len(hashes) - suppressed:
                self.metrics.removals_forwarded.inc(forwarded)

    def _release(self, pod: str, state: _PodState, keys: Iterable[int]) -> None:
        """`pod` no longer holds the engine block that completed `keys`."""
        for key in keys:
            count = state.keys.get(key, 0) - 1
            if count > 0:
                state.keys[key] = count
                continue
            state.keys.pop(key, None)
            self._drop_holder(key, pod)

    def clear_pod(self, pod: str) -> None:
        """Forget everything `pod` holds (AllBlocksCleared, its publisher restarted, or the pod
        left the pool), its speculative entries too, as llm-d's index clears every entry of the
        pod: what a cleared or restarted engine was about to compute is not known to be there."""
        self._clear_blocks(pod)
        self.forget_speculative(pod)

    def _clear_blocks(self, pod: str) -> None:
        self._groups.pop(pod, None)
        state = self._pods.pop(pod, None)
        self._forget_pod(pod, state.keys if state is not None else ())

    def lost_events(self, pod: str) -> None:
        """Some of `pod`'s events never reached this process (a sequence gap): what it holds is
        relearned from its next stores. Its speculative entries stay: the requests they stand for
        still run there."""
        self._clear_blocks(pod)

    # --- speculative entries ------------------------------------------------------------------

    def add_speculative(self, keys: Sequence[int], pod: str, now: float, ttl: float) -> None:
        """`pod` is about to compute `keys` (a request was just sent there): count them as held
        until `now + ttl`, so the requests right behind it find it before its KV events arrive."""
        self.expire(now)
        expiry = now + ttl
        self._guess(keys, pod, expiry)
        self._expiries.append((expiry, keys, pod))

    def _guess(self, keys: Sequence[int], pod: str, expiry: float) -> None:
        speculative = self._speculative
        pinned = self._pins.get(pod)
        for key in keys:
            if pinned and (count := pinned.pop(key)) is not None:
                self._orphan(pod, key, count)  # an expiry replaces the pinned entry
            holders = speculative.get(key)
            if holders is None:
                speculative[key] = {pod: expiry}
            else:
                holders[pod] = expiry
        if pinned is not None and not pinned:
            del self._pins[pod]
        self._track_guessed(pod, keys)

    def _track_guessed(self, pod: str, keys: Iterable[int]) -> None:
        """`keys` are in `_speculative` for `pod` now."""
        guessed = self._guessed_keys.get(pod)
        if guessed is None:
            self._guessed_keys[pod] = set(keys)
        else:
            guessed.update(keys)

    def _orphan(self, pod: str, key: int, count: int) -> None:
        """`count` requests in flight pin `key` on `pod`, whose pinned entry ended."""
        orphans = self._orphan_pins.get(pod)
        if orphans is None:
            self._orphan_pins[pod] = {key: count}
        else:
            orphans[key] = count

    def _unguess(self, key: int, pod: str, holders: dict[str, float]) -> None:
        """`pod` no longer holds `key` speculatively (`holders` is the key's entry, `pod` in it)."""
        del holders[pod]
        if not holders:
            del self._speculative[key]
        pinned = self._pins.get(pod)
        if pinned and (count := pinned.pop(key)) is not None:
            self._orphan(pod, key, count)
            if not pinned:
                del self._pins[pod]
        guessed = self._guessed_keys[pod]
        guessed.discard(key)
        if not guessed:
            del self._guessed_keys[pod]

    def forget_speculative(self, pod: str) -> None:
        """Drop `pod`'s speculative entries (it left the pool: what it was about to compute is
        gone with it). Their expiry records stay queued and find nothing to expire."""
        speculative = self._speculative
        for key in self._guessed_keys.pop(pod, ()):
            holders = speculative[key]
            del holders[pod]
            if not holders:
                del speculative[key]
        pinned = self._pins.pop(pod, None)
        if pinned:
            self._orphan_pins.setdefault(pod, {}).update(pinned.items())

    def pin_speculative(self, keys: Sequence[int], pod: str) -> None:
        """`pod` is about to compute `keys` for a request: count them as held until its KV events
        store them or, failing that, until `release_speculative` for every request pinning them.
        A running request's blocks cannot be evicted, so the entry is true while it runs."""
        pinned = self._pins.get(pod)
        if pinned is None:
            pinned = self._pins[pod] = PinRuns()
        orphans = self._orphan_pins.get(pod)
        speculative = self._speculative
        fresh = pinned.add(keys, orphans)  # a key pinned already (a shared prefix): one more request
        for key in fresh:
            holders = speculative.get(key)
            if holders is None:
                speculative[key] = {pod: _PINNED}
            else:
                holders[pod] = _PINNED
        if fresh:
            self._track_guessed(pod, fresh)
        if not pinned:  # no keys
            del self._pins[pod]
        if orphans is not None and not orphans:
            del self._orphan_pins[pod]

    def release_speculative(self, keys: Sequence[int], pod: str, expiry: float) -> None:
        """A request that pinned `keys` on `pod` ended: the entries no other request pins and no
        KV event confirmed end at `expiry` (a grace for events still on their way)."""
        speculative = self._speculative
        pinned = self._pins.get(pod) or PinRuns()
        orphans = self._orphan_pins.get(pod)
        # a key not pinned any more had its entry end before this request (a confirming store)
        released = pinned.remove(keys, orphans)
        for key in released:  # the last request pinning it: the entry expires
            speculative[key][pod] = expiry
        if not pinned:
            self._pins.pop(pod, None)
        if orphans is not None and not orphans:
            del self._orphan_pins[pod]
        if released:
            self._expiries.append((expiry, keys, pod))

    def expire(self, now: float) -> None:
        expiries, speculative = self._expiries, self._speculative
        by_pod = self._guessed_keys
        while expiries and expiries[0][0] <= now:
            _, keys, pod = expiries.popleft()
            guessed = by_pod.get(pod)
            if guessed is None:  # none left (expired, confirmed or forgotten)
                continue
            for key in keys:
                holders = speculative.get(key)
                if holders is not None and holders.get(pod, now + 1) <= now:
                    del holders[pod]
                    if not holders:
                        del speculative[key]
                    guessed.discard(key)
            if not guessed:
                del by_pod[pod]

    # --- lookups ------------------------------------------------------------------------------

    def _count_lookup(self, depth: int, started: float) -> None:
        """A lookup's metrics: `depth` keys matched, begun at perf_counter `started`."""
        if self.metrics is not None:
            self.metrics.lookups.inc()
            self.metrics.lookup_hits.inc(depth)
            self.metrics.max_pod_hits.inc(depth)
            self.metrics.lookup_latency.observe(time.perf_counter() - started)

    def keys_for(
        self,
        tokens: Sequence[int],
        model: str,
        features: Sequence[tuple[int, int, str]] = (),
        cache_salt: str = "",
    ) -> list[int]:
        """A prompt's keys, its multimodal items (offset, length, hash) and cache salt folded
        into the blocks they touch, as llm-d's precise producer computes them."""
        if not features and not cache_salt:
            return self.processor.keys(tokens, model)
        size = self.processor.block_size
        extras = block_extras_from_features(features, size, len(tokens))
        extras = fold_cache_salt(extras, cache_salt, len(tokens) // size)
        return self.processor.keys(tokens, model, extras=extras)


class KVBlockIndex(KVBlockIndexBase):
    """Request block key -> {pod: device-tier weight} in this process, LRU-bounded to `size`
    keys, fed by KV events; stored per run of keys (`epp.datalayer.kvruns`), so a prompt's
    shared prefix is looked up and moved as one."""

    def __init__(self, processor: TokenProcessor, **options: Unpack[IndexOptions]) -> None:
        super().__init__(processor, **options)
        # key -> its holders: a pod's name when one pod holds it at weight 1 (most keys; a dict per
        # key would double the index's memory), else {pod: weight}; one per run of keys.
        self._runs = KeyRuns()

    def __len__(self) -> int:
        return len(self._runs)

    def holders(self, key: int) -> Mapping[str, float]:
        return _as_map(self._runs.get(key))

    def lru_items(self) -> list[tuple[int, str | dict[str, float]]]:
        """(key, holders), least recently used first (for tests and diagnostics)."""
        return list(self._runs.items())

    def _hold_each(self, keys: Sequence[int], pod: str, weight: float) -> None:
        if len(self._runs) + len(keys) <= self.size:  # no eviction between two keys
            self._hold(keys, pod, weight)
        else:
            super()._hold_each(keys, pod, weight)

    def _hold(self, keys: Sequence[int], pod: str, weight: float) -> None:
        runs = self._runs
        admitted = runs.hold(keys, pod, weight, self.pod_cache_size)
        if admitted and self.metrics is not None:
            self.metrics.admissions.inc(admitted)
        while len(runs) > self.size:
            runs.pop_oldest()
            if self.metrics is not None:
                self.metrics.evictions.inc()

    def _forget_pod(self, pod: str, keys: Iterable[int]) -> None:
        for key in keys:
            self._runs.drop(key, pod)

    def _drop_holder(self, key: int, pod: str) -> None:
        self._runs.drop(key, pod)

    def longest_prefix(self, keys: Sequence[int], pods: Collection[str]) -> dict[str, float]:
        """llm-d's LongestPrefix score for each of `pods`: the tier-weighted length of the run of
        keys it holds from the first one. Stops at the first key no remaining pod holds."""
        started = time.perf_counter()
        scores: dict[str, float] = {}
        depth = 0
        if self._unit_weights:  # every holder weighs 1: a pod's score is where its run ends
            depth = self._unit_runs(keys, pods, scores)
        else:
            runs, speculative, merged = self._runs, self._speculative, self._merged
            weighted: dict[str, float] | None = None
            touched: list[int] = []  # the LRU moves, made after the walk (it reads no order)
            for key in keys:
                holders = merged(key) if speculative else runs.get(key)
                if not holders:
                    break
                source = pods if weighted is None else weighted
                weighted = {
                    pod: (weighted or {}).get(pod, 0.0) + w
                    for pod, w in _as_map(holders).items()
                    if pod in source
                }
                if not weighted:
                    break
                if key in runs.run_of:
                    touched.append(key)
                depth += 1
                scores.update(weighted)
            runs.touch(touched)
        self._count_lookup(depth, started)
        return scores

    def _unit_runs(self, keys: Sequence[int], pods: Collection[str], scores: dict[str, float]) -> int:
        """`longest_prefix` when every holder weighs 1: writes each pod's run length into `scores`
        and returns the depth reached. A key's holders are its confirmed entry and its speculative
        ones, tested in place rather than merged into a dictionary per key."""
        runs, speculative = self._runs, self._speculative
        depth = 0
        if not keys:
            return depth
        first = runs.get(keys[0])
        alive = {first} if isinstance(first, str) else set(first or ())
        alive.update(speculative.get(keys[0]) or ())
        alive = {pod for pod in alive if pod in pods}
        touched: list[int] = []  # the LRU moves, made before the single pod's walk or at the end
        for index, key in enumerate(keys):
            if len(alive) == 1:
                runs.touch(touched)
                (pod,) = alive
                depth = self._single_run(keys, index, pod, depth)
                scores[pod] = float(depth)
                return depth
            holders = runs.get(key)
            guessed = speculative.get(key)
            if (holders is None and guessed is None) or not alive:
                break
            if isinstance(holders, str):  # one confirmed holder (most keys)
                if guessed is not None:
                    lost = alive.difference(guessed)
                    lost.discard(holders)
                elif holders not in alive:
                    break
                else:
                    lost = alive - {holders} if len(alive) > 1 else set()
            else:
                lost = alive.difference(holders or (), guessed or ())
            if lost:
                for pod in lost:
                    scores[pod] = float(depth)
                alive -= lost
                if not alive:
                    break
            if holders is not None:
                touched.append(key)
            depth += 1
        runs.touch(touched)
        for pod in alive:
            scores[pod] = float(depth)
        return depth

    def _single_run(self, keys: Sequence[int], start: int, pod: str, depth: int) -> int:
        """`_unit_runs` from `keys[start]` on, once `pod` is the only candidate left: the depth
        where its run ends. A stretch of keys the index keeps together and `pod` holds confirmed
        is matched and moved as one, with no probe of the speculative entries."""
        runs, speculative = self._runs, self._speculative
        run_of, index, count = runs.run_of, start, len(keys)
        while index < count:
            key = keys[index]
            run = run_of.get(key)
            if run is None:
                guessed = speculative.get(key)
                if guessed is None or pod not in guessed:
                    break
                depth += 1
                index += 1
                continue
            offset, length = stretch(run, keys, index)
            holders = run.holders
            if holders != pod and (isinstance(holders, str) or pod not in holders):
                held = 0  # held by other pods: each key counts while `pod` holds it speculatively
                while held < length and (guessed := speculative.get(keys[index + held])) and pod in guessed:
                    held += 1
                if held:
                    runs.move_to_end(runs.cut(run, offset, offset + held))
                    depth += held
                if held < length:
                    break
                index += held
                continue
            runs.move_to_end(runs.cut(run, offset, offset + length))
            depth += length
            index += length
        return depth

    def _merged(self, key: int) -> str | dict[str, float] | None:
        """Confirmed holders of `key` and speculative ones (weight 1)."""
        confirmed = self._runs.get(key)
        guessed = self._speculative.get(key)
        if guessed is None:
            return confirmed
        merged = dict.fromkeys(guessed, 1.0)
        merged.update(_as_map(confirmed))
        return merged

    def sample_keys(self, count: int) -> list[int]:
        """Up to `count` most recent keys (for tests and diagnostics)."""
        return self._runs.newest(count)
