"""Virtual-clock helpers for driving the simulator's engine without sleeping."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from epp.sim.engine import Engine, StepOutcome
from epp.sim.profiles import TINY_TEST, Profile


def run_engine(engine: Engine, now: float = 0.0, max_steps: int = 100_000) -> list[StepOutcome]:
    """Step ``engine`` in virtual time until it has nothing left to do; returns the busy steps."""
    steps: list[StepOutcome] = []
    for _ in range(max_steps):
        if not engine.has_work():
            return steps
        outcome = engine.step(now)
        if outcome.batch_size:
            steps.append(outcome)
            now = outcome.end
            continue
        timer = engine.next_timer()
        if timer is None:
            return steps
        now = max(now, timer)
    raise AssertionError("engine did not drain")


@pytest.fixture
def run() -> Callable[..., list[StepOutcome]]:
    return run_engine


def make_profile(**changes: object) -> Profile:
    """The tiny profile with a simple, exactly predictable cost model plus ``changes``."""
    base = TINY_TEST.with_overrides(
        step_base_s=0.001,
        decode_seq_s=0.0001,
        kv_read_token_s=0.0,
        prefill_token_s=0.0001,
        attention_pair_s=0.0,
        kv_transfer_base_s=0.002,
        kv_transfer_token_s=0.00001,
        max_num_batched_tokens=1024,
    )
    return base.with_overrides(**changes)


@pytest.fixture
def profile_factory() -> Callable[..., Profile]:
    return make_profile
