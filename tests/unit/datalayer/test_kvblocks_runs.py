"""The precise index's unit-weight lookup (the run per pod tested in place, a single remaining
pod on its own loop) against its weighted lookup, which merges each key's confirmed and
speculative holders into one dictionary: random holders (one pod, several, none), speculative
entries with and without confirmed ones, candidate sets of every size. Scores and the LRU order
the lookups leave must be the same."""

from __future__ import annotations

import random

import pytest

from epp.datalayer.kvblocks import KVBlockIndex, TokenProcessor

PODS = [f"pod-{n}" for n in range(5)]


def random_index(rng: random.Random, keys: list[int]) -> KVBlockIndex:
    idx = KVBlockIndex(TokenProcessor(16))
    for key in keys:
        for pod in rng.sample(PODS, rng.choice([0, 1, 1, 1, 2, 3])):
            idx._hold([key], pod, 1.0)
        guessed = rng.sample(PODS, rng.choice([0, 0, 1, 2]))
        if guessed:
            idx._guess([key], guessed[0], 5.0)
            for pod in guessed[1:]:
                idx._guess([key], pod, 5.0)
    rng.shuffle(order := [key for key, _ in idx.lru_items()])
    idx._runs.touch(order)  # an LRU order unrelated to the prompt's
    return idx


@pytest.mark.parametrize("seed", range(300))
def test_unit_runs_are_the_weighted_lookup(seed: int) -> None:
    rng = random.Random(seed)
    keys = [rng.randrange(2**64) for _ in range(rng.randrange(0, 12))]
    unit = random_index(random.Random(seed), keys)
    weighted = random_index(random.Random(seed), keys)
    weighted._unit_weights = False  # the merged-holders path, every weight 1
    assert unit._unit_weights
    prompt = keys + [rng.choice(keys)] * rng.randrange(2) if keys else []
    candidates = set(rng.sample(PODS, rng.randrange(1, len(PODS) + 1)))
    got = unit.longest_prefix(prompt, candidates)
    want = weighted.longest_prefix(prompt, candidates)
    assert {pod: score for pod, score in got.items() if score} == want
    assert unit.lru_items() == weighted.lru_items()
