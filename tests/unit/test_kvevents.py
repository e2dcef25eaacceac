"""vLLM's KV-event wire format: every shape vLLM writes decodes, bad input raises one error type
or is skipped and counted, never anything else."""

from __future__ import annotations

import msgpack
import pytest

from epp.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventError,
    block_hash,
    decode_batch,
    decode_events,
    encode_batch,
    parse_topic,
    prompt_block_hashes,
)


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_round_trip_of_our_encoder() -> None:
    events = [BlockStored([1, 2], None, list(range(32)), None), BlockRemoved([1]), AllBlocksCleared()]
    decoded = decode_events(encode_batch(events, 1.0, 16, {}))
    assert isinstance(decoded[0], BlockStored) and decoded[0].block_size == 16 and decoded[0].medium == "GPU"
    assert decoded[0].block_hashes == [1, 2] and decoded[0].token_ids == list(range(32))
    assert isinstance(decoded[1], BlockRemoved) and decoded[1].block_hashes == [1]
    assert isinstance(decoded[2], AllBlocksCleared)


def test_newest_vllm_fields_and_short_forms() -> None:
    full = ["BlockStored", [5], 4, [1] * 16, 16, None, "CPU", "lora-a", None, 2, "sliding_window", 128]
    short = ["BlockStored", [6], None, [2] * 16, 16, None]  # trailing defaults omitted
    batch = decode_batch(pack([3.5, [full, short, ["BlockRemoved", [5], "GPU", 2]], 1]))
    assert batch.timestamp == 3.5 and batch.data_parallel_rank == 1 and batch.skipped == 0
    stored, short_stored, removed = batch.events
    assert isinstance(stored, BlockStored) and isinstance(short_stored, BlockStored)
    assert (stored.medium, stored.lora_name, stored.group_idx, stored.kv_cache_spec_kind) == (
        "CPU",
        "lora-a",
        2,
        "sliding_window",
    )
    assert short_stored.medium is None and short_stored.lora_name is None
    assert isinstance(removed, BlockRemoved) and removed.group_idx == 2


def test_map_form_and_bytes_hashes() -> None:
    sha = bytes(range(32))
    event = {"type": "BlockStored", "block_hashes": [sha], "parent_block_hash": None, "token_ids": [7] * 4}
    (stored,) = decode_events(pack([0.0, [event]]))
    assert isinstance(stored, BlockStored)
    assert stored.block_hashes == [int.from_bytes(sha[-8:], "big")]
    assert block_hash(-1) == 2**64 - 1


@pytest.mark.parametrize(
    "payload",
    [b"\xc1not msgpack", pack({"a": 1}), pack([1.0]), pack([1.0, "events"]), b""],
)
def test_malformed_batches_raise_one_error_type(payload: bytes) -> None:
    with pytest.raises(KVEventError):
        decode_batch(payload)


def test_unknown_or_malformed_events_are_skipped_and_counted() -> None:
    good = ["BlockRemoved", [1], "GPU"]
    batch = decode_batch(
        pack(
            [0.0, [["FutureEvent", 1], good, ["BlockStored", "x"], ["BlockStored", [1], None, ["a"]], 7, []]]
        )
    )
    assert [type(e) for e in batch.events] == [BlockRemoved]
    assert batch.skipped == 5


def test_topics_as_llm_d_reads_them() -> None:
    assert parse_topic("kv@10.0.0.1:8000@m") == ("10.0.0.1:8000", "m")
    assert parse_topic("kv@10.0.0.1@m") == ("10.0.0.1", "m")
    assert parse_topic("odd") == ("odd", "")


def test_a_chain_goes_on_from_known_leading_hashes() -> None:
    """A shared prefix's hashes, handed over as `known`, give the chain of the whole prompt."""
    prompt = [(n * 2654435761) % 2**32 for n in range(53)]
    for block_size in (1, 4, 16):
        whole = prompt_block_hashes(prompt, block_size, "m")
        assert len(whole) == len(prompt) // block_size
        for cut in range(len(prompt) + 1):
            known = prompt_block_hashes(prompt[:cut], block_size, "m")
            assert prompt_block_hashes(prompt, block_size, "m", known) == whole
        assert prompt_block_hashes(prompt, block_size, "other", ()) != whole
