"""vLLM's KV-cache events: the event types, the prompt-block hash chain, and the wire codec.

One leaf module used by the simulator (which publishes events), the EPP's KV-event plugins and
the Kthena baseline (which read them), so the encoder and decoder cannot drift apart.

Wire format (vLLM ``--kv-events-config`` with the zmq publisher): each message is three frames,
``[topic, sequence (8-byte big-endian, +1 per message), msgpack(EventBatch)]`` with
``EventBatch = [timestamp, [event, ...], data_parallel_rank?]`` and events in msgspec's tagged
array form with ``omit_defaults`` (trailing fields at their default are left out):
``["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
lora_name, extra_keys?, group_idx?, kv_cache_spec_kind?, ...]``, ``["BlockRemoved", block_hashes,
medium, group_idx?]`` and ``["AllBlocksCleared"]``. The decoder also reads the map form (key
``type`` = tag) and bytes hashes (newer vLLM's sha256: the last 8 bytes, big-endian).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import xxhash

_hash = xxhash.xxh3_64_intdigest


def namespace_seed(namespace: str) -> int:
    """Root of the hash chain for a model or LoRA adapter name."""
    return _hash(namespace.encode())


def prompt_block_hashes(
    token_ids: Sequence[int], block_size: int, namespace: str, known: Sequence[int] = (), salt: str = ""
) -> list[int]:
    """Chained hashes of every FULL block of ``token_ids``; a trailing partial block has none.
    ``known``: the hashes of its leading blocks, already computed (a shared prefix's, at most
    as many as the full blocks): the chain goes on from the last. ``salt``: the request's
    ``cache_salt``, hashed into the first block only, as vLLM does (its extra keys), so prompts
    salted differently share no block and the rest of the chain needs no salt of its own."""
    done = len(known)
    step = 4 * block_size
    data = array("I", token_ids[done * block_size :]).tobytes()
    parent = known[-1] if known else namespace_seed(namespace)
    hashes = list(known)
    first = 0
    if salt and not done and len(token_ids) >= block_size:
        # A block's bytes have a fixed length, so appending the salt cannot collide with another block.
        parent = _hash(data[:step] + salt.encode(), parent)
        hashes.append(parent)
        first = step
    _chain(data, first, (len(token_ids) // block_size - done) * step, step, parent, hashes)
    return hashes


def next_block_hashes(parent: int, token_ids: Sequence[int], block_size: int) -> list[int]:
    """The chain's hashes of the full blocks of ``token_ids``, which follow the block hashed
    ``parent`` (a request's generated tokens, hashed as they fill blocks, as vLLM does)."""
    step = 4 * block_size
    hashes: list[int] = []
    _chain(array("I", token_ids).tobytes(), 0, len(token_ids) // block_size * step, step, parent, hashes)
    return hashes


def _chain(data: bytes, first: int, stop: int, step: int, parent: int, out: list[int]) -> None:
    for start in range(first, stop, step):
        parent = _hash(data[start : start + step], parent)
        out.append(parent)


@dataclass(slots=True)
class BlockStored:
    """New blocks entered the prefix cache (vLLM ``BlockStored`` KV event)."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    lora_name: str | None
    # Decoded from the wire (the simulator's own events leave them at their defaults; kept out of
    # repr so the engine's pinned trace does not depend on them).
    block_size: int = field(default=0, repr=False)  # tokens per engine block (0: not given)
    medium: str | None = field(default=None, repr=False)
    lora_id: int | None = field(default=None, repr=False)
    group_idx: int | None = field(default=None, repr=False)
    kv_cache_spec_kind: str | None = field(default=None, repr=False)
    # Per block: what else vLLM hashed into it (multimodal hashes, cache_salt in block 0), or None.
    extra_keys: list[Any] | None = field(default=None, repr=False)


@dataclass(slots=True)
class BlockRemoved:
    """Blocks left the prefix cache (vLLM ``BlockRemoved`` KV event)."""

    block_hashes: list[int]
    medium: str | None = field(default=None, repr=False)
    group_idx: int | None = field(default=None, repr=False)


@dataclass(slots=True)
class AllBlocksCleared:
    """The whole prefix cache was dropped (vLLM ``AllBlocksCleared`` KV event)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


MEDIUM = "GPU"
TOPIC_PREFIX = "kv@"


class KVEventError(ValueError):
    """A KV-event message that is not vLLM's wire format (the whole message is unusable)."""


def topic_for(host: str, port: int, model: str) -> str:
    """``kv@<ip>:<port>@<model>``: the pod identity llm-d's indexer expects (v0.7 and later)."""
    return f"{TOPIC_PREFIX}{host}:{port}@{model}"


def parse_topic(topic: str) -> tuple[str, str]:
    """(pod id, model) of a topic, as llm-d reads it: ``kv@<pod>@<model>`` gives both; any other
    shape is the pod id as a whole, with no model."""
    parts = topic.split("@")
    if len(parts) == 3:
        return parts[1], parts[2]
    return topic, ""


def encode_event(event: KVEvent, block_size: int, lora_ids: Mapping[str, int]) -> list[Any]:
    """msgspec's ``array_like`` form of vLLM's structs with ``omit_defaults``: the tag, then the
    fields in declaration order; fields with a default (``extra_keys``, ``group_idx``, ...) are
    left out while they hold it, the required ones (up to ``lora_name``) never."""
    if isinstance(event, BlockStored):
        lora = event.lora_name
        return [
            "BlockStored",
            event.block_hashes,
            event.parent_block_hash,
            event.token_ids,
            block_size,
            lora_ids.get(lora) if lora else None,
            MEDIUM,
            lora,
            *([event.extra_keys] if event.extra_keys is not None else []),
        ]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", event.block_hashes, MEDIUM]
    return ["AllBlocksCleared"]


def encode_batch(
    events: list[KVEvent], timestamp: float, block_size: int, lora_ids: Mapping[str, int]
) -> bytes:
    """vLLM's ``KVEventBatch``: ``[ts, events]`` (``data_parallel_rank`` is omitted at its default)."""
    payload = [timestamp, [encode_event(e, block_size, lora_ids) for e in events]]
    return msgpack.packb(payload, use_bin_type=True)


_MASK64 = (1 << 64) - 1


def block_hash(value: Any) -> int:
    """An engine block hash as an unsigned 64-bit int: ints as they are (int64 wrapped), bytes
    (vLLM's sha256 hashes) by their last 8 bytes big-endian, as llm-d's indexer reads them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value & _MASK64
    if isinstance(value, bytes):
        return int.from_bytes(value[-8:], "big")
    raise KVEventError(f"block hash of type {type(value).__name__}")


_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
    "kv_cache_spec_kind",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


def _fields(raw: Any, names: tuple[str, ...]) -> list[Any]:
    """An event's fields in declaration order, from the array form (tag first) or the map form
    (``type`` = tag, vLLM PR #42892); absent trailing fields are None."""
    if isinstance(raw, dict):
        return [raw.get(name) for name in names]
    values = list(raw[1 : 1 + len(names)])
    return values + [None] * (len(names) - len(values))


def _token_ids(value: Any) -> list[int]:
    """`value` if it is a list of token ids: unsigned 32-bit integers, as vLLM's are and as the
    index hashes them (checked in C by `array`; a larger one failed later, while its blocks were
    keyed, and took the rest of its batch with it)."""
    if not isinstance(value, list):
        raise KVEventError("expected a list of token ids")
    try:
        array("I", value)
    except (TypeError, OverflowError):
        raise KVEventError("expected a list of token ids (unsigned 32-bit integers)") from None
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def decode_event(raw: Any) -> KVEvent | None:
    """One event; None for a tag this version does not know. Raises KVEventError when a known
    event is malformed."""
    if isinstance(raw, dict):
        tag = raw.get("type")
    elif isinstance(raw, list) and raw:
        tag = raw[0]
    else:
        raise KVEventError("an event is neither an array nor a map")
    if tag == "BlockStored":
        hashes, parent, tokens, size, lora_id, medium, lora, extra, group, kind = _fields(raw, _STORED_FIELDS)
        if not isinstance(hashes, list):
            raise KVEventError("BlockStored without block_hashes")
        return BlockStored(
            [block_hash(h) for h in hashes],
            None if parent is None else block_hash(parent),
            _token_ids(tokens if tokens is not None else []),
            _opt_str(lora),
            size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0,
            _opt_str(medium),
            _opt_int(lora_id),
            _opt_int(group),
            _opt_str(kind),
            extra if isinstance(extra, list) else None,
        )
    if tag == "BlockRemoved":
        hashes, medium, group = _fields(raw, _REMOVED_FIELDS)
        if not isinstance(hashes, list):
            raise KVEventError("BlockRemoved without block_hashes")
        return BlockRemoved([block_hash(h) for h in hashes], _opt_str(medium), _opt_int(group))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


@dataclass(slots=True)
class DecodedBatch:
    timestamp: float
    events: list[KVEvent]
    data_parallel_rank: int | None
    skipped: int  # events of an unknown tag or malformed, left out of `events`


def decode_batch(payload: bytes) -> DecodedBatch:
    """vLLM's ``[timestamp, [event, ...], dp_rank?]``. A payload that is not such a batch raises
    KVEventError; single unknown or malformed events are skipped and counted."""
    try:
        batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # ExtraData, FormatError, ...
        raise KVEventError(f"not msgpack: {exc}") from None
    if not isinstance(batch, list) or len(batch) < 2 or not isinstance(batch[1], list):
        raise KVEventError("not an EventBatch [ts, events, dp_rank?]")
    timestamp = batch[0] if isinstance(batch[0], int | float) else 0.0
    rank = _opt_int(batch[2]) if len(batch) > 2 else None
    events: list[KVEvent] = []
    skipped = 0
    for raw in batch[1]:
        try:
            event = decode_event(raw)
        except (KVEventError, IndexError, TypeError, ValueError):
            event = None
        if event is None:
            skipped += 1
        else:
            events.append(event)
    return DecodedBatch(float(timestamp), events, rank, skipped)


def decode_events(payload: bytes) -> list[KVEvent]:
    """The events of one batch (unknown or malformed ones left out). Raises KVEventError."""
    return decode_batch(payload).events
