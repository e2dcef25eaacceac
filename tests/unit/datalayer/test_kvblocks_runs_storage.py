"""The precise index stored per run of keys (`epp.datalayer.kvruns`) against a per-key model: an
ordered map key -> holders, every key moved to the end on its own. Random sequences of stores
(shared prefixes, slices starting inside a run, repeated keys, CPU-tier weights, bounded holders),
dropped holders, forgotten pods, speculative entries, lookups of every candidate set and evictions
by a small size bound: after each step the index's keys, their holders and their LRU order, and
each lookup's scores, must be the model's. A pod's pin counts, kept per run too, against a count
per key."""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence

import pytest

from epp.datalayer.kvblocks import KVBlockIndex, TokenProcessor, _as_map
from epp.datalayer.kvruns import PinRuns

PODS = ["a", "b", "c", "d"]


class PerKeyModel:
    """The index's confirmed entries and lookups, one key at a time."""

    def __init__(self, size: int, pod_cache_size: int) -> None:
        self.entries: OrderedDict[int, dict[str, float]] = OrderedDict()
        self.size, self.pod_cache_size = size, pod_cache_size

    def hold(self, keys: Sequence[int], pod: str, weight: float) -> None:
        for key in keys:
            holders = self.entries.get(key)
            if holders is None:
                self.entries[key] = {pod: weight}
            else:
                self.entries.move_to_end(key)
                if holders.get(pod, 0.0) < weight:
                    holders.pop(pod, None)
                    holders[pod] = weight
                    while len(holders) > self.pod_cache_size:
                        del holders[next(iter(holders))]
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def drop(self, key: int, pod: str) -> None:
        holders = self.entries.get(key)
        if holders is not None and holders.pop(pod, None) is not None and not holders:
            del self.entries[key]

    def lookup(
        self, keys: Sequence[int], pods: Collection[str], speculative: dict[int, dict[str, float]]
    ) -> dict[str, float]:
        scores: dict[str, float] = {}
        weighted: dict[str, float] | None = None
        for key in keys:
            holders = dict.fromkeys(speculative.get(key, ()), 1.0) | self.entries.get(key, {})
            source = pods if weighted is None else weighted
            before = weighted or {}
            weighted = {pod: before.get(pod, 0.0) + w for pod, w in holders.items() if pod in source}
            if not weighted:
                break
            if key in self.entries:
                self.entries.move_to_end(key)
            scores.update(weighted)
        return scores


def prompt(rng: random.Random, chains: list[list[int]]) -> list[int]:
    """A prompt's keys: a known chain's prefix (sometimes from inside it), a new tail, and now
    and then a key repeated."""
    chain = rng.choice(chains)
    start = rng.choice([0, 0, 0, rng.randrange(len(chain))])
    keys = chain[start : rng.randrange(start, len(chain) + 1)]
    keys += [rng.randrange(2**64) for _ in range(rng.choice([0, 0, 1, 3]))]
    if keys and rng.random() < 0.1:
        keys.insert(rng.randrange(len(keys) + 1), rng.choice(keys))
    return keys


@pytest.mark.parametrize("seed", range(200))
def test_runs_keep_the_per_key_order_and_holders(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([6, 12, 40, 1000])
    pod_cache_size = rng.choice([1, 2, 10])
    index = KVBlockIndex(TokenProcessor(16), size=size, pod_cache_size=pod_cache_size)
    model = PerKeyModel(size, pod_cache_size)
    chains = [[rng.randrange(2**64) for _ in range(rng.randrange(1, 14))] for _ in range(3)]
    weights = [1.0] if rng.random() < 0.5 else [1.0, 1.0, 0.8]
    for _ in range(60):
        roll = rng.random()
        if roll < 0.4:
            keys, pod, weight = prompt(rng, chains), rng.choice(PODS), rng.choice(weights)
            if weight != 1.0:
                index._unit_weights = False
            index._hold_each(keys, pod, weight)
            model.hold(keys, pod, weight)
        elif roll < 0.55 and model.entries:
            key = rng.choice(list(model.entries))
            for pod in rng.sample(PODS, rng.randrange(1, 3)):
                index._drop_holder(key, pod)
                model.drop(key, pod)
        elif roll < 0.6:
            pod = rng.choice(PODS)
            held = [key for key, holders in model.entries.items() if pod in holders]
            rng.shuffle(held)
            index._forget_pod(pod, held)
            for key in held:
                model.drop(key, pod)
        elif roll < 0.7:
            keys = prompt(rng, chains)
            index._guess(keys[: rng.randrange(len(keys) + 1)], rng.choice(PODS), 5.0)
        else:
            keys, pods = prompt(rng, chains), set(rng.sample(PODS, rng.randrange(1, len(PODS) + 1)))
            want = model.lookup(keys, pods, index._speculative)
            got = index.longest_prefix(keys, pods)
            assert {pod: score for pod, score in got.items() if score} == want
        assert [(key, list(_as_map(holders).items())) for key, holders in index.lru_items()] == [
            (key, list(holders.items())) for key, holders in model.entries.items()
        ]  # the holders' order too: it says which one a full key drops
        assert len(index) == len(model.entries)
        assert index.sample_keys(5) == list(reversed(model.entries))[:5]
    for key, _ in index.lru_items():
        assert index._runs.run_of[key].keys.count(key) == 1


@pytest.mark.parametrize("seed", range(200))
def test_pin_runs_keep_the_per_key_counts(seed: int) -> None:
    """A pod's pin counts per run against a count per key, over key lists that are no chains
    (any keys, in any order, some twice), so pins and releases cover parts of runs."""
    rng = random.Random(seed)
    pins, counts = PinRuns(), Counter[int]()
    orphans: dict[int, int] = {}
    model_orphans: dict[int, int] = {}
    pinned: list[list[int]] = []
    for _ in range(60):
        roll = rng.random()
        if roll < 0.45 or not pinned:
            keys = [rng.randrange(12) for _ in range(rng.randrange(8))]
            want = [key for key in dict.fromkeys(keys) if key not in counts]
            for key in keys:
                counts[key] += 1 if key in counts else model_orphans.pop(key, 0) + 1
            assert pins.add(keys, orphans) == want
            pinned.append(keys)
        elif roll < 0.85:
            keys = pinned.pop(rng.randrange(len(pinned)))
            ended = []
            for key in keys:
                if key not in counts:
                    if (left := model_orphans.pop(key, 0) - 1) > 0:
                        model_orphans[key] = left
                elif counts[key] > 1:
                    counts[key] -= 1
                else:
                    del counts[key]
                    ended.append(key)
            assert sorted(pins.remove(keys, orphans)) == sorted(ended)
        else:
            key = rng.randrange(12)
            count = counts.pop(key, None)
            if count is not None:
                model_orphans[key] = count
            assert pins.pop(key) == count
            if count is not None:
                orphans[key] = count
        assert dict(pins.items()) == dict(counts) and len(pins) == len(counts)
        assert orphans == model_orphans
