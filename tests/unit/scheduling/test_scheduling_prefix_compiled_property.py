"""The compiled prefix index against the pure-Python one, driven by Hypothesis through the interface
the producers use: random sequences of adds (one endpoint, or a prompt's blocks for a whole slice of
the pool, which hands out ids past 64 where match stops using bitmasks), matches, removals, pods
leaving in bulk and rekeys, with odd prompts (empty, one repeated block, keys at the ends of 64 bits,
a few thousand blocks) and odd capacities (zero, one, negative, past 64 bits), hashes as lists,
tuples or the chain's array('Q'). Every match (order included), LRU order, holding and size must be
the same; a difference shrinks to a short sequence of operations. Skipped when the extension is not
built."""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

pytest.importorskip("epp.scheduling.prefix._blockindex")

from epp.scheduling.prefix.index import CompiledPrefixIndex, PythonPrefixIndex
from tests.unit.plugin_helpers import endpoints

POOL = endpoints(130)
EDGE_KEYS = [0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1]

keys = st.one_of(st.integers(0, 24), st.sampled_from(EDGE_KEYS), st.integers(0, 2**64 - 1))
prompts = st.one_of(
    st.lists(keys, max_size=40),
    st.builds(lambda key, count: [key] * count, keys, st.integers(1, 5)),
    st.builds(
        lambda start, count: list(range(start, start + count)), st.integers(0, 30), st.integers(0, 3000)
    ),
)
capacities = st.sampled_from([-3, 0, 1, 2, 3, 5, 64, 1_000_000, 2**70])
forms = st.sampled_from([list, tuple, lambda hashes: array("Q", hashes)])
members = st.sampled_from(POOL)


class SameAsPython(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.compiled = CompiledPrefixIndex()
        self.python = PythonPrefixIndex()

    @rule(endpoint=members, hashes=prompts, capacity=capacities, form=forms)
    def add(self, endpoint: object, hashes: list[int], capacity: int, form: type[Sequence[int]]) -> None:
        self.compiled.add(endpoint, form(hashes), capacity)  # type: ignore[arg-type]
        self.python.add(endpoint, hashes, capacity)  # type: ignore[arg-type]

    @rule(start=st.integers(0, 129), count=st.integers(1, 130), hashes=prompts, capacity=capacities)
    def add_to_many(self, start: int, count: int, hashes: list[int], capacity: int) -> None:
        for endpoint in POOL[start : start + count]:
            self.compiled.add(endpoint, array("Q", hashes), capacity)
            self.python.add(endpoint, hashes, capacity)

    @rule(hashes=prompts, form=forms)
    def match(self, hashes: list[int], form: type[Sequence[int]]) -> None:
        compiled = self.compiled.match(form(hashes))  # type: ignore[call-arg]
        assert list(compiled.items()) == list(self.python.match(hashes).items())

    @rule(endpoint=members)
    def remove(self, endpoint: object) -> None:
        self.compiled.remove_endpoint(endpoint)  # type: ignore[arg-type]
        self.python.remove_endpoint(endpoint)  # type: ignore[arg-type]

    @rule(start=st.integers(0, 129), count=st.integers(1, 130))
    def pods_leave(self, start: int, count: int) -> None:
        for endpoint in POOL[start : start + count]:
            self.compiled.remove_endpoint(endpoint)
            self.python.remove_endpoint(endpoint)

    @rule(old=members, new=members)
    def rekey(self, old: object, new: object) -> None:
        self.compiled.rekey(old, new)  # type: ignore[arg-type]
        self.python.rekey(old, new)  # type: ignore[arg-type]

    @invariant()
    def same_tables(self) -> None:
        assert self.compiled.size() == self.python.size()
        assert self.compiled.endpoints() == self.python.endpoints()
        for endpoint in self.python.endpoints():
            assert self.compiled.lru(endpoint) == self.python.lru(endpoint)
            assert self.compiled.blocks_held(endpoint) == self.python.blocks_held(endpoint)


SameAsPython.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_the_compiled_index_behaves_as_the_python_one = SameAsPython.TestCase
