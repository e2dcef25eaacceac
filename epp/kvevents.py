"""vLLM's KV-cache events: the event types, the prompt-block hash chain, and the wire codec.

One leaf module used by the simulator (which publishes events), the EPP's KV-event plugins and
the Kthena baseline (which read them), so the encoder and decoder cannot drift apart.

Wire format (vLLM ``--kv-events-config`` with the zmq publisher): each message is three frames,
``[topic, sequence (8-byte big-endian, +1 per message), msgpack(EventBatch)]`` with
``EventBatch = [timestamp, [event, ...], data_parallel_rank]`` and events in msgspec array form:
``["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
lora_name]``, ``["BlockRemoved", block_hashes, medium]`` and ``["AllBlocksCleared"]``.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import xxhash

_hash = xxhash.xxh3_64_intdigest


def namespace_seed(namespace: str) -> int:
    """Root of the hash chain for a model or LoRA adapter name."""
    return _hash(namespace.encode())


def prompt_block_hashes(token_ids: Sequence[int], block_size: int, namespace: str) -> list[int]:
    """Chained hashes of every FULL block of ``token_ids``; a trailing partial block has none."""
    data = array("I", token_ids).tobytes()
    step = 4 * block_size
    parent = namespace_seed(namespace)
    hashes: list[int] = []
    for start in range(0, (len(token_ids) // block_size) * step, step):
        parent = _hash(data[start : start + step], parent)
        hashes.append(parent)
    return hashes


@dataclass(slots=True)
class BlockStored:
    """New blocks entered the prefix cache (vLLM ``BlockStored`` KV event)."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    lora_name: str | None


@dataclass(slots=True)
class BlockRemoved:
    """Blocks left the prefix cache (vLLM ``BlockRemoved`` KV event)."""

    block_hashes: list[int]


@dataclass(slots=True)
class AllBlocksCleared:
    """The whole prefix cache was dropped (vLLM ``AllBlocksCleared`` KV event)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


MEDIUM = "GPU"


def topic_for(host: str, port: int, model: str) -> str:
    """``kv@<ip>:<port>@<model>``: the pod identity llm-d's indexer expects (v0.7 and later)."""
    return f"kv@{host}:{port}@{model}"


def encode_event(event: KVEvent, block_size: int, lora_ids: Mapping[str, int]) -> list[Any]:
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
        ]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", event.block_hashes, MEDIUM]
    return ["AllBlocksCleared"]


def encode_batch(
    events: list[KVEvent], timestamp: float, block_size: int, lora_ids: Mapping[str, int]
) -> bytes:
    payload = [timestamp, [encode_event(e, block_size, lora_ids) for e in events], None]
    return msgpack.packb(payload, use_bin_type=True)


def decode_events(payload: bytes) -> list[KVEvent]:
    """vLLM's KV-event batch `[timestamp, [event, ...], dp_rank]` (msgpack, array form)."""
    _, raw_events, *_ = msgpack.unpackb(payload, raw=False)
    events: list[KVEvent] = []
    for raw in raw_events:
        tag = raw[0]
        if tag == "BlockStored":
            events.append(BlockStored(list(raw[1]), raw[2], list(raw[3]), raw[7] if len(raw) > 7 else None))
        elif tag == "BlockRemoved":
            events.append(BlockRemoved(list(raw[1])))
        elif tag == "AllBlocksCleared":
            events.append(AllBlocksCleared())
    return events
