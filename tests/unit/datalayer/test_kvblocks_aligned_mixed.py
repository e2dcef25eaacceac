"""`_stored_aligned` against the block-by-block path on streams the plain differential test
(test_kvblocks_aligned.py) does not make: LoRA adapters (their own chains), stores chained on a
block from another event of another length, engine blocks carrying extra keys (multimodal
hashes: the general path), pods cleared or forgotten, and lookups in between (they reorder the
index's LRU, so a later eviction drops other keys). Both indexes must stay the same, and so
must every lookup's scores (the fast index's unit-weight runs, the other's merged holders)."""

from __future__ import annotations

import random

import pytest

from epp.datalayer.kvblocks import KVBlockIndex
from epp.kvevents import AllBlocksCleared, BlockRemoved, BlockStored
from tests.unit.datalayer.test_kvblocks_aligned import index_pair, state

PODS = ["a", "b", "c", "d"]


def step(
    rng: random.Random,
    known: dict[str, list[int]],
    fast: KVBlockIndex,
    slow: KVBlockIndex,
    media: list[str | None],
) -> None:
    pod = rng.choice(PODS)
    roll = rng.random()
    if roll < 0.55:
        hashes = [rng.randrange(1, 60) for _ in range(rng.randrange(1, 7))]
        parent = rng.choice([None, 0, *known[pod]]) if known[pod] else None
        per_block = rng.choice([4, 4, 4, 2, 8, 6])
        tokens = [rng.randrange(3) for _ in range(per_block * len(hashes))]
        extra = None
        if rng.random() < 0.15:
            extra = [[f"mm{rng.randrange(3)}"] if rng.random() < 0.5 else None for _ in hashes]
        event = BlockStored(
            hashes,
            parent,
            tokens,
            rng.choice([None, None, "lora-x", "lora-y"]),
            block_size=per_block,
            medium=rng.choice(media),
            extra_keys=extra,
        )
        for index in (fast, slow):
            index.apply(pod, "m", [event])
        known[pod].extend(hashes)
    elif roll < 0.75 and known[pod]:
        removed = BlockRemoved(rng.sample(known[pod], min(rng.randrange(1, 5), len(known[pod]))))
        for index in (fast, slow):
            index.apply(pod, "m", [removed])
    elif roll < 0.8:
        for index in (fast, slow):
            index.apply(pod, "m", [AllBlocksCleared()])
        known[pod] = []
    elif roll < 0.83:
        for index in (fast, slow):
            index.lost_events(pod)
        known[pod] = []
    else:
        model = rng.choice(["m", "lora-x", "lora-y"])
        prompt = [rng.randrange(3) for _ in range(4 * rng.randrange(1, 8))]
        candidates = set(rng.sample(PODS, rng.randrange(1, len(PODS) + 1)))
        got = fast.longest_prefix(fast.keys_for(prompt, model), candidates)
        unit, slow._unit_weights = slow._unit_weights, False  # the merged-holders lookup
        want = slow.longest_prefix(slow.keys_for(prompt, model), candidates)
        slow._unit_weights = unit
        if unit:  # the unit-weight runs leave a 0 for a pod whose run ended at once
            got = {pod: score for pod, score in got.items() if score}
        assert got == want


@pytest.mark.parametrize("seed", range(150))
def test_mixed_streams_with_lookups_leave_the_same_index(seed: int) -> None:
    rng = random.Random(seed)
    size, confirm = rng.choice([4, 10, 1000]), rng.random() < 0.5
    fast, slow = index_pair(size, confirm)
    for index in (fast, slow):
        index.pin_speculative(index.keys_for([0, 1, 2, 0, 1, 2, 0, 1], "m"), "b")
        index.pin_speculative(index.keys_for([1, 1, 1, 1], "lora-x"), "c")
    known: dict[str, list[int]] = {pod: [] for pod in PODS}
    # every tier weighing 1 (the unit-weight lookups) in half the streams, a CPU tier in the others
    media: list[str | None] = [None, None, "GPU"] if seed % 2 else [None, None, "cpu", "GPU"]
    for _ in range(80):
        step(rng, known, fast, slow, media)
        assert state(fast) == state(slow)
