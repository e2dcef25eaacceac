"""Stores whose engine blocks are the index's blocks take one chain and one hold per event
(`_stored_aligned`); the same random event streams applied block by block (the general path)
must leave the same index: entries and their LRU order, each pod's engine blocks (order, keys,
chain, tail, references), key counts, speculative entries, metrics. The streams repeat blocks (within
an event and across events), remove them, clear pods, use another tier, confirm speculative
entries, and bound the index so that stores evict."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from epp.datalayer.kvblocks import KVBlockIndex, KVIndexMetrics, TokenProcessor, _PodState
from epp.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

PODS = ["a", "b", "c"]


class BlockByBlock(KVBlockIndex):
    def _stored_aligned(self, *args: object) -> bool:
        return False


def stream(rng: random.Random) -> list[tuple[str, list[KVEvent]]]:
    out: list[tuple[str, list[KVEvent]]] = []
    known: dict[str, list[int]] = {pod: [] for pod in PODS}
    for _ in range(60):
        pod = rng.choice(PODS)
        roll = rng.random()
        if roll < 0.65:
            count = rng.randrange(1, 6)
            hashes = [rng.randrange(1, 40) for _ in range(count)]
            if rng.random() < 0.1 and hashes:
                hashes.append(hashes[0])  # announced twice in one event
            parent = rng.choice([None, *known[pod]]) if known[pod] else None
            per_block = rng.choice([4, 4, 4, 2, 8])  # the index's 4, or a tail, or two per block
            tokens = [rng.randrange(2) for _ in range(per_block * len(hashes))]  # keys recur
            medium = rng.choice([None, None, "cpu"])
            event = BlockStored(hashes, parent, tokens, None, block_size=per_block, medium=medium)
            out.append((pod, [event]))
            known[pod].extend(hashes)
        elif roll < 0.9 and known[pod]:
            out.append((pod, [BlockRemoved(rng.sample(known[pod], min(3, len(known[pod]))))]))
        elif roll < 0.95:
            out.append((pod, [AllBlocksCleared()]))
            known[pod] = []
    return out


def state(idx: KVBlockIndex) -> object:
    def pod(s: _PodState) -> object:
        return [(h, b.keys, b.chain, b.tail, b.refs) for h, b in s.blocks.items()], sorted(s.keys.items())

    assert idx.metrics is not None
    metrics = [m.collect()[0].samples[0].value for m in (idx.metrics.admissions, idx.metrics.evictions)]
    return (
        idx.lru_items(),
        {name: pod(s) for name, s in idx._pods.items()},
        idx._speculative,
        idx._guessed_keys,
        idx._unit_weights,
        metrics,
    )


def index_pair(size: int, confirm: bool) -> tuple[KVBlockIndex, KVBlockIndex]:
    """The index with its aligned-store fast path, and one that applies every store block by block."""
    fast, slow = (
        cls(
            TokenProcessor(4),
            size=size,
            metrics=KVIndexMetrics(CollectorRegistry()),
            confirmation_ends_speculation=confirm,
        )
        for cls in (KVBlockIndex, BlockByBlock)
    )
    return fast, slow


@pytest.mark.parametrize("seed", range(200))
def test_aligned_stores_are_the_block_by_block_ones(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([3, 8, 1000])
    confirm = rng.random() < 0.5
    fast, slow = index_pair(size, confirm)
    for index in (fast, slow):
        guess = random.Random(seed)
        for pod in PODS:
            index.pin_speculative([guess.randrange(2**64) for _ in range(3)], pod)
            index.pin_speculative(index.keys_for([guess.randrange(8) for _ in range(8)], "m"), pod)
    for pod, events in stream(rng):
        fast.apply(pod, "m", events)
        slow.apply(pod, "m", events)
        assert state(fast) == state(slow)


def test_a_store_that_evicts_holds_block_by_block() -> None:
    """At the bound, a key evicted by the event's first block and met again later in it comes
    back with the event's pod alone, as block by block."""
    fast, slow = (
        cls(TokenProcessor(4), size=2, metrics=KVIndexMetrics(CollectorRegistry()))
        for cls in (KVBlockIndex, BlockByBlock)
    )
    first, second, other = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]
    for index in (fast, slow):
        index.apply("a", "m", [BlockStored([1], None, first, None, block_size=4)])
        index.apply("a", "m", [BlockStored([2], 1, second, None, block_size=4)])
        index.apply("b", "m", [BlockStored([3], None, other, None, block_size=4)])  # evicts the first
        index.apply("c", "m", [BlockStored([4, 5], None, first + second, None, block_size=4)])
    assert state(fast) == state(slow)
    keys = fast.keys_for(first + second, "m")
    assert dict(fast.holders(keys[1])) == {"c": 1.0}
