"""Speculative entries against a plain model of what they mean. For each (key, pod): whether it is
held speculatively, until when (or pinned: until the requests pinning it end), and how many
requests in flight pin it, a count that outlives the entry when a KV event confirms the block,
the pod is forgotten or `add_speculative` gives the entry an expiry. Random sequences of pins,
releases, TTL entries, confirming stores, forgotten pods and expiries must leave the index where
the model is, and its lookups must see what the model holds: the reference for any cheaper
bookkeeping of the pins."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from epp.datalayer.kvblocks import KVBlockIndex, TokenProcessor
from epp.kvevents import BlockStored

PODS = ["a", "b", "c"]
PINNED = float("inf")


@dataclass
class Model:
    """(key, pod) -> expiry (inf while pinned); (key, pod) -> requests in flight pinning it."""

    held: dict[tuple[int, str], float] = field(default_factory=dict)
    pins: dict[tuple[int, str], int] = field(default_factory=dict)

    def pin(self, keys: list[int], pod: str) -> None:
        for key in keys:
            self.held[key, pod] = PINNED
            self.pins[key, pod] = self.pins.get((key, pod), 0) + 1

    def release(self, keys: list[int], pod: str, expiry: float) -> None:
        for key in keys:
            count = self.pins.pop((key, pod), 0) - 1
            if count > 0:
                self.pins[key, pod] = count
            elif self.held.get((key, pod)) == PINNED:
                self.held[key, pod] = expiry

    def add(self, keys: list[int], pod: str, expiry: float) -> None:
        for key in keys:
            self.held[key, pod] = expiry

    def end(self, key: int, pod: str) -> None:
        self.held.pop((key, pod), None)

    def expire(self, now: float) -> None:
        self.held = {at: expiry for at, expiry in self.held.items() if expiry > now}


def index_view(index: KVBlockIndex) -> tuple[dict[tuple[int, str], float], dict[tuple[int, str], int]]:
    """The index as the model; each pod's keys as `forget_speculative` finds them."""
    held = {(key, pod): at for key, holders in index._speculative.items() for pod, at in holders.items()}
    assert all(index._speculative.values()), "an entry without holders is dropped"
    pins = {(key, pod): count for pod, counts in index._pins.items() for key, count in counts.items()}
    assert {at for at, expiry in held.items() if expiry == PINNED} == set(pins), "the pinned entries"
    for pod, counts in index._orphan_pins.items():
        for key, count in counts.items():
            assert (key, pod) not in pins, "a pin counted once"
            pins[key, pod] = count
    assert all(count > 0 for count in pins.values())
    assert all(index._pins.values()) and all(index._orphan_pins.values()), "no empty dictionaries"
    by_pod = {pod: {key for key, p in held if p == pod} for pod in PODS}
    assert index._guessed_keys == {pod: keys for pod, keys in by_pod.items() if keys}
    return held, pins


@pytest.mark.parametrize("seed", range(300))
def test_speculative_entries_follow_the_model(seed: int) -> None:
    rng = random.Random(seed)
    index = KVBlockIndex(TokenProcessor(2), confirmation_ends_speculation=True)
    model = Model()
    prompts = [[rng.randrange(3) for _ in range(rng.randrange(2, 9))] for _ in range(6)]
    in_flight: list[tuple[list[int], str]] = []
    now = 0.0
    for step in range(80):
        now += rng.choice([0.0, 0.5, 1.0])
        roll = rng.random()
        pod = rng.choice(PODS)
        keys = index.keys_for(rng.choice(prompts), "m")
        if roll < 0.35:
            index.pin_speculative(keys, pod)
            model.pin(keys, pod)
            in_flight.append((keys, pod))
        elif roll < 0.6 and in_flight:
            keys, pod = in_flight.pop(rng.randrange(len(in_flight)))
            index.release_speculative(keys, pod, now + 2)
            model.release(keys, pod, now + 2)
        elif roll < 0.7:
            ttl = rng.choice([2, 2.0])  # an int too; one TTL, as a config has: expiries in order
            index.add_speculative(keys, pod, now, ttl)
            model.expire(now)
            model.add(keys, pod, now + ttl)
        elif roll < 0.85:  # the pod's engine stores the prompt's blocks: the entries end
            tokens = rng.choice(prompts)
            blocks = len(tokens) // 2
            stored = index.keys_for(tokens, "m")
            hashes = [1000 * step + n for n in range(blocks)]
            index.apply(pod, "m", [BlockStored(hashes, None, tokens[: 2 * blocks], None, block_size=2)])
            for key in stored:
                model.end(key, pod)
        elif roll < 0.9:
            index.forget_speculative(pod)
            for key, holder in list(model.held):
                if holder == pod:
                    model.end(key, holder)
        else:
            index.expire(now)
            model.expire(now)
        assert index_view(index) == (model.held, model.pins), f"step {step}"
        for holder in PODS:  # a lookup runs over what the pod holds, confirmed or speculatively
            for prompt in prompts:
                prompt_keys = index.keys_for(prompt, "m")
                run = 0
                for key in prompt_keys:
                    if (key, holder) not in model.held and holder not in index.holders(key):
                        break
                    run += 1
                assert index.longest_prefix(prompt_keys, [holder]).get(holder, 0.0) == run
