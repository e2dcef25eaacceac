"""The engine's behaviour, pinned: a digest of every step outcome, KV event and counter of a
random workload that reaches everything the engine models (prefix hits and evictions, chunked
prefill, preemption, LoRA slots, P/D legs with leases and transfers, aborts, queue limits, cache
resets). Making the engine faster must leave the digest as it is; a deliberate change of the model
updates it, and says so in its commit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from epp.bench.events import PythonDecodeRun
from epp.sim.engine import Engine, Request, State, StepOutcome
from epp.sim.histogram import Histogram
from epp.sim.profiles import TINY_TEST


def trace(
    seed: int,
    check: Callable[[Engine], None] = lambda engine: None,
    lazy: bool = False,
    record: Callable[[Engine, StepOutcome], list[Any]] | None = None,
    policy: str = "fcfs",
) -> list[Any]:
    """Drive an engine with random arrivals and aborts; ``check`` runs after every step.
    ``lazy``: the engine's ``lazy_counters``, which must not change a thing the trace records.
    ``record``: what to trace of each step (``outcome_record`` by default). Under the priority
    ``policy`` each request draws a priority too."""
    record = record or outcome_record
    rng = random.Random(seed)
    profile = (
        TINY_TEST if seed % 2 == 0 else dataclasses.replace(TINY_TEST, num_gpu_blocks=64, max_num_seqs=16)
    )
    engine = Engine(
        profile,
        "m",
        record_kv_events=True,
        lease_seconds=0.05,
        scheduling_policy=policy,
        lazy_counters=lazy,
    )
    prefixes = [[rng.randrange(1000) for _ in range(rng.randrange(10, 120))] for _ in range(5)]
    live: list[Request] = []
    out: list[Any] = []
    now = 0.0
    for n in range(400):
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            kind = rng.random()
            request = Request(
                f"r{n}-{len(live)}",
                rng.choice(prefixes) + [rng.randrange(1000) for _ in range(rng.randrange(1, 60))],
                rng.choice([0, 1, 5, 20, 60]),
                now,
                lora=rng.choice([None, None, "a", "b", "c"]),
                remote_prefill=kind < 0.1,
                hold_blocks=0.1 <= kind < 0.2,
                priority=rng.randrange(-2, 3) if policy == "priority" else 0,
            )
            rejection = engine.add(request)
            out.append(["add", request.id, rejection and rejection.value])
            if rejection is None:
                live.append(request)
        if live and rng.random() < 0.03:
            victim = live.pop(rng.randrange(len(live)))
            engine.abort(victim)
            out.append(["abort", victim.id])
        if rng.random() < 0.02:
            out.extend(["release", r.id, engine.release_lease(r.id)] for r in live if r.lease_key)
        step = engine.step(now)
        check(engine)
        out.append(record(engine, step))
        if step.batch_size:
            now = step.end
        else:
            timer = engine.next_timer()
            now = max(now + 0.001, timer if timer is not None else 0.0)
        if rng.random() < 0.01:
            out.append(["reset", engine.reset_prefix_cache()])
    out.append([stat_record(getattr(engine.stats, f.name)) for f in dataclasses.fields(engine.stats)])
    return out


def stat_record(value: object) -> object:
    return [value.counts, repr(value.total), value.count] if isinstance(value, Histogram) else repr(value)


def outcome_record(engine: Engine, step: StepOutcome) -> list[Any]:
    finished = [
        [r.id, r.finish_reason, r.cached_tokens, repr(r.first_token_at), repr(r.finished_at), r.output_done]
        for r in step.finished
    ]
    return [
        [repr(step.start), repr(step.duration), step.batch_size, step.prefill_tokens, step.decode_seqs],
        [r.id for r in step.emitted],
        [r.id for r in step.preempted],
        finished,
        [r.leased_blocks for r in step.finished],
        [engine.num_running, engine.num_waiting, repr(engine.kv_usage()), engine.running_loras()],
        [engine.waiting_loras(), engine.num_leases(), repr(engine.next_timer())],
        [repr(event) for event in engine.drain_kv_events()],
    ]


def tokens_record(engine: Engine, step: StepOutcome) -> list[Any]:
    """``outcome_record`` and what the step's tokens tell a client (added after the digests)."""
    first = [r.id for r in step.first_tokens]
    return [*outcome_record(engine, step), first, [repr(gap) for gap in step.gaps]]


def digest(seed: int, lazy: bool = False, policy: str = "fcfs") -> str:
    return hashlib.sha256(json.dumps(trace(seed, lazy=lazy, policy=policy)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    ("seed", "expected"),
    [(0, "e6cc78eb6684a657"), (1, "216acbc01d0720cf"), (2, "ee747d07274b5349"), (3, "4d6c20b0b31aa73b")],
)
def test_engine_reproduces_its_pinned_trace(seed: int, expected: str, lazy: bool) -> None:
    assert digest(seed, lazy) == expected


@pytest.mark.parametrize(
    ("seed", "expected"),
    [(0, "848b330b3892a5bc"), (1, "8491ce61faa48b7a"), (2, "50fab234bbdc830e"), (3, "0f65d799adade3ac")],
)
@pytest.mark.parametrize("lazy", [False, True])
def test_priority_engine_reproduces_its_pinned_trace(seed: int, expected: str, lazy: bool) -> None:
    """The waiting queue ordered by priority, with aborts out of its middle and preemption."""
    assert digest(seed, lazy, "priority") == expected


def test_lazy_counters_step_cohorts_and_sync_to_the_eager_values() -> None:
    """The traces above go through cohort steps (so the lazy digests test them), and syncing a
    cohort at any step writes the counters an eager engine has."""
    cohort_steps = 0

    def check(engine: Engine) -> None:
        nonlocal cohort_steps
        cohort_steps += engine._cohort and engine._ticks > 0
        if engine._ticks % 3 == 2:  # sync some cohorts mid-way, which must change nothing
            engine.sync_counters()

    for seed in range(4):
        lazy = trace(seed, check, lazy=True, record=tokens_record)
        assert json.dumps(lazy) == json.dumps(trace(seed, record=tokens_record))
    assert cohort_steps > 100


@pytest.mark.parametrize("seed", range(4, 24))
def test_lazy_counters_change_nothing(seed: int) -> None:
    """More workloads than the pinned ones, eager against lazy (a cohort of one request that
    needs a block, for one, is not in those)."""
    lazy = trace(seed, lazy=True, record=tokens_record)
    assert json.dumps(lazy) == json.dumps(trace(seed, record=tokens_record))


def test_gaps_and_first_tokens_account_for_every_emitted_token() -> None:
    """Each emitted request gets its first token (listed) or an inter-token gap: the time since
    its previous token's step ended."""
    last: dict[str, float] = {}

    def record(engine: Engine, step: StepOutcome) -> list[Any]:
        first = {r.id for r in step.first_tokens}
        expected = []
        for r in step.emitted:
            if r.id not in first:
                expected.append(step.end - last[r.id])
            last[r.id] = step.end
        assert step.gaps == expected
        assert first <= {r.id for r in step.emitted}
        return []

    for seed in range(4):
        for lazy in (False, True):
            last.clear()
            trace(seed, lazy=lazy, record=record)


@pytest.mark.parametrize("lazy", [False, True])
def test_running_counters_match_the_requests(lazy: bool) -> None:
    """The small counters the step reads instead of the requests' tables and token counts."""

    def check(engine: Engine) -> None:
        engine.sync_counters()
        running = engine._running
        assert engine._running_context == sum(r.computed for r in running)
        for r in running:
            assert r.state is State.RUNNING
            assert r.free_slots == len(r.table.ids) * engine.block_size - r.computed
            assert r.hashed_blocks == len(r.block_hashes or ())

    for seed in range(4):
        trace(seed, check, lazy)


@pytest.mark.parametrize("num_blocks", [256, 40, 24])
def test_cohort_steps_a_driver_takes_leave_the_engine_as_its_own_steps(num_blocks: int) -> None:
    """``decode_ahead`` / ``took_decode_steps``: a driver taking a cohort's plain steps with the
    event queue's arithmetic (`PythonDecodeRun`, the reference of the compiled one) and reporting
    them gives the same step times, KV usage at every step (its blocks counted before they are
    allocated), KV events, counters and histograms as the engine stepping itself, also where the
    pool is short enough that blocks run out (the driver stops before the step that would evict
    or preempt). The events are the same in the same order, but those of the blocks the taken
    steps fill (their BlockStored) come when the driver reports the steps."""
    profile = dataclasses.replace(TINY_TEST, num_gpu_blocks=num_blocks, kv_read_token_s=1e-7)

    def busy_engine() -> Engine:
        engine = Engine(profile, "m", record_kv_events=True, lazy_counters=True)
        rng = random.Random(num_blocks)
        shared = [rng.randrange(1000) for _ in range(40)]
        for i in range(6):
            prompt = shared + [rng.randrange(1000) for _ in range(rng.randrange(1, 30))]
            engine.add(Request(f"r{i}", prompt, 60 + 13 * i, 0.0))
        return engine

    def observe(engine: Engine, end: float, events: list[str], blocks_taken: int = 0) -> list[Any]:
        events += [str(e) for e in engine.drain_kv_events()]
        return [end, engine.kv_usage(blocks_taken)]

    plain, driven = busy_engine(), busy_engine()
    expected: list[Any] = []
    expected_events: list[str] = []
    now = 0.0
    while plain.has_work():
        outcome = plain.step(now)
        now = outcome.end
        expected.append(observe(plain, now, expected_events))
    got: list[Any] = []
    got_events: list[str] = []
    now, taken = 0.0, 0
    while driven.has_work():
        outcome = driven.step(now)
        now = outcome.end
        got.append(observe(driven, now, got_events))
        ahead = driven.decode_ahead()
        if ahead is None:
            continue
        left, context, base, kv, blocks = ahead
        itl = driven.stats.itl
        run = PythonDecodeRun(
            left, outcome.batch_size, context, base, kv, outcome.gaps[0], now,
            driven.stats.busy_seconds, itl.total, itl.bounds, blocks,
        )  # fmt: skip
        while run.left:
            now = run.step(now)
            got.append(observe(driven, now, got_events, run.blocks_taken))
        driven.took_decode_steps(run.taken, run.context, run.last_end, run.busy, run.itl_total, run.adds)
        taken += run.taken
    assert got == expected
    assert got_events == expected_events and any("BlockStored" in e for e in expected_events)
    for field in dataclasses.fields(plain.stats):
        assert stat_record(getattr(driven.stats, field.name)) == stat_record(getattr(plain.stats, field.name))
    assert taken > 50
