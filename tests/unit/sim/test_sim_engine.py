"""Engine model in virtual time: batching, chunked prefill, prefix cache, preemption, LoRA, P/D."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from epp.kvevents import BlockRemoved, BlockStored
from epp.sim.engine import Engine, PriorityQueue, Rejection, Request, State, StepOutcome
from epp.sim.histogram import Histogram
from epp.sim.metrics import build_registry, render
from epp.sim.profiles import Profile

ProfileFactory = Callable[..., Profile]
RunFn = Callable[..., list[StepOutcome]]


def tokens(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def req(rid: str, prompt: list[int], out: int = 4, at: float = 0.0, **kw: object) -> Request:
    return Request(rid, prompt, out, at, **kw)  # type: ignore[arg-type]


def test_single_request_timeline(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(), "m")
    r = req("a", tokens(100), out=3)
    assert engine.add(r) is None
    steps = run(engine)
    # one prefill step of 100 tokens, then two decode steps of one sequence
    assert [s.prefill_tokens for s in steps] == [100, 0, 0]
    assert steps[0].duration == pytest.approx(0.001 + 100 * 0.0001)
    assert steps[1].duration == pytest.approx(0.001 + 0.0001)
    assert r.first_token_at == pytest.approx(steps[0].end)
    assert r.finished_at == pytest.approx(steps[2].end)
    assert (r.output_done, r.finish_reason, r.cached_tokens) == (3, "length", 0)
    assert engine.kv_usage() == 0.0
    assert engine.stats.generation_tokens == 3
    assert engine.stats.prompt_tokens == 100
    assert engine.stats.finished == {"length": 1}
    assert engine.stats.ttft.count == 1
    assert engine.stats.itl.count == 2


def test_prefix_cache_reuse_reports_cached_tokens(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(), "m")
    first = req("a", tokens(64))
    engine.add(first)
    run(engine)
    # identical prompt: every full block is cached, but the last prompt token is always computed
    same = req("b", tokens(64))
    longer = req("c", tokens(100))
    engine.add(same)
    run(engine)
    engine.add(longer)
    run(engine)
    assert first.cached_tokens == 0
    assert same.cached_tokens == 48
    assert longer.cached_tokens == 64
    assert engine.stats.prefix_queries == 64 + 64 + 100
    assert engine.stats.prefix_hits == 48 + 64


def test_different_namespaces_do_not_share(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(max_loras=2), "m")
    engine.add(req("a", tokens(64)))
    run(engine)
    adapter = req("b", tokens(64), lora="adapter")
    engine.add(adapter)
    run(engine)
    assert adapter.cached_tokens == 0


def test_cache_salt_isolates_prefixes_as_vllm_does(profile_factory: ProfileFactory, run: RunFn) -> None:
    """vLLM hashes `cache_salt` into the first block: another salt (or none) shares no block,
    the same salt shares them all."""
    engine = Engine(profile_factory(), "m")
    first = req("a", tokens(64), cache_salt="tenant-a")
    other = req("b", tokens(64), cache_salt="tenant-b")
    unsalted = req("c", tokens(64))
    same = req("d", tokens(64), cache_salt="tenant-a")
    for request in (first, other, unsalted, same):
        engine.add(request)
        run(engine)
    assert [r.cached_tokens for r in (first, other, unsalted, same)] == [0, 0, 0, 48]
    assert first.block_hashes == same.block_hashes
    # the salt is in the first block only: the chain goes on from it as unsalted chains do
    assert (first.block_hashes or [])[0] != (unsalted.block_hashes or [])[0]


def test_ttft_proportional_to_uncached_tokens(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(), "m")
    cold = req("cold", tokens(256), out=1)
    engine.add(cold)
    run(engine)
    warm = req("warm", tokens(256)[:192] + tokens(64, start=9000), out=1, at=10.0)
    engine.add(warm)
    run(engine, now=10.0)
    assert cold.first_token_at == pytest.approx(0.001 + 256 * 0.0001)
    assert warm.cached_tokens == 192
    assert warm.first_token_at is not None
    assert warm.first_token_at - 10.0 == pytest.approx(0.001 + 64 * 0.0001)


def test_decode_step_time_grows_with_batch(profile_factory: ProfileFactory, run: RunFn) -> None:
    durations = []
    for batch in (1, 2, 4):
        engine = Engine(profile_factory(kv_read_token_s=1e-6), "m")
        for i in range(batch):
            engine.add(req(f"r{i}", tokens(20, start=100 * i), out=2))
        steps = run(engine)
        decode = [s for s in steps if s.prefill_tokens == 0]
        assert [s.decode_seqs for s in decode] == [batch]
        # context read: each sequence has 21 tokens of KV (prompt + first token)
        assert decode[0].duration == pytest.approx(0.001 + batch * 0.0001 + batch * 21 * 1e-6)
        durations.append(decode[0].duration)
    assert durations == sorted(durations) and len(set(durations)) == 3


def test_chunked_prefill_and_decode_first(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(max_num_batched_tokens=64), "m")
    short = req("short", tokens(10), out=5)
    engine.add(short)
    first = engine.step(0.0)
    long = req("long", tokens(150, start=5000), out=1)
    engine.add(long)
    second = engine.step(first.end)
    # the running decode is scheduled first, the new prompt gets the remaining 63-token budget
    assert second.decode_seqs == 1 and second.prefill_tokens == 63
    run(engine, now=second.end)
    assert long.output_done == 1 and short.output_done == 5
    assert long.first_token_at is not None and short.finished_at is not None


def test_queueing_at_max_num_seqs(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(max_num_seqs=2), "m")
    requests = [req(f"r{i}", tokens(16, start=100 * i), out=3) for i in range(3)]
    for r in requests:
        engine.add(r)
    engine.step(0.0)
    assert (engine.num_running, engine.num_waiting) == (2, 1)
    run(engine, now=1.0)
    assert requests[2].scheduled_at is not None
    assert requests[2].scheduled_at >= requests[0].finished_at  # type: ignore[operator]
    assert engine.stats.queue_time.count == 3


def test_waiting_queue_limit_and_too_long(profile_factory: ProfileFactory) -> None:
    engine = Engine(profile_factory(max_waiting=2, max_model_len=100), "m")
    assert engine.add(req("a", tokens(10))) is None
    assert engine.add(req("b", tokens(10))) is None
    assert engine.add(req("c", tokens(10))) is Rejection.QUEUE_FULL
    assert engine.add(req("d", tokens(99), out=2)) is Rejection.TOO_LONG
    assert engine.stats.requests_rejected == 2


def test_lru_eviction_of_unused_blocks(profile_factory: ProfileFactory, run: RunFn) -> None:
    # 8 blocks of 16 tokens; each 48-token request ends holding 3 full cached blocks
    engine = Engine(profile_factory(num_gpu_blocks=9), "m", record_kv_events=True)
    a, b = req("a", tokens(48, 0), out=1), req("b", tokens(48, 1000), out=1)
    for r in (a, b):
        engine.add(r)
        run(engine)
    assert engine.pool.num_cached() == 6 and engine.kv_usage() == 0.0
    engine.drain_kv_events()
    c = req("c", tokens(80, 2000), out=1)  # needs 5 blocks: 2 free + 3 evicted from the oldest (a)
    engine.add(c)
    run(engine)
    removed = [h for e in engine.drain_kv_events() if isinstance(e, BlockRemoved) for h in e.block_hashes]
    assert set(removed) == set(a.block_hashes or [])
    a2, b2 = req("a2", tokens(48, 0), out=1), req("b2", tokens(48, 1000), out=1)
    engine.add(b2)
    run(engine)
    engine.add(a2)
    run(engine)
    assert b2.cached_tokens == 32 and a2.cached_tokens == 0


def test_running_blocks_are_pinned(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(num_gpu_blocks=6), "m")
    pinned = req("pinned", tokens(48, 0), out=20)
    engine.add(pinned)
    outcome = engine.step(0.0)
    assert engine.pool.num_in_use() == 3
    other = req("other", tokens(48, 1000), out=1)  # needs 3 blocks, only 2 free: must wait
    engine.add(other)
    outcome = engine.step(outcome.end)
    assert other.state is State.WAITING
    hit, _ = engine.pool.match(pinned.block_hashes or [], 10)
    assert hit == 3
    run(engine, now=outcome.end)
    assert other.output_done == 1 and pinned.output_done == 20


def test_preemption_under_block_pressure(profile_factory: ProfileFactory, run: RunFn) -> None:
    # two sequences that each grow to 4 blocks but only 6 blocks exist
    engine = Engine(profile_factory(num_gpu_blocks=6), "m")
    first = req("first", tokens(16, 0), out=40)
    second = req("second", tokens(16, 1000), out=40)
    engine.add(first)
    engine.add(second)
    steps = run(engine)
    preempted = [r.id for s in steps for r in s.preempted]
    assert preempted and set(preempted) == {"second"}  # the most recently admitted one
    assert engine.stats.preemptions == len(preempted)
    assert first.output_done == 40 and second.output_done == 40
    assert second.finished_at > first.finished_at  # type: ignore[operator]
    assert engine.kv_usage() == 0.0


def test_lora_slots(profile_factory: ProfileFactory) -> None:
    engine = Engine(profile_factory(max_loras=1), "m")
    a = req("a", tokens(16), out=3, lora="alpha")
    b = req("b", tokens(16, 500), out=3, lora="beta")
    base = req("c", tokens(16, 900), out=3)
    for r in (a, b, base):
        engine.add(r)
    outcome = engine.step(0.0)
    # beta has no free adapter slot and waits; the base-model request behind it is not blocked
    assert (a.state, b.state, base.state) == (State.RUNNING, State.WAITING, State.RUNNING)
    assert engine.running_loras() == ["alpha"] and engine.waiting_loras() == ["beta"]
    now = outcome.end
    while b.state is State.WAITING:
        now = engine.step(now).end
    assert a.state is State.DONE and engine.running_loras() == ["beta"]


def test_prefill_leg_lease_release(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(), "m", lease_seconds=30.0)
    leg = req("p", tokens(40), out=1, hold_blocks=True)
    engine.add(leg)
    outcome = engine.step(0.0)
    assert leg.state is State.DONE and leg.lease_key == "p"
    assert len(leg.leased_blocks) == 3 and engine.kv_usage() > 0
    assert engine.release_lease("p") == 3
    assert engine.release_lease("p") is None
    assert engine.kv_usage() == 0.0 and engine.stats.prefill_only == 1
    # a second leg's lease expires on its own
    other = req("q", tokens(40, 500), out=1, hold_blocks=True)
    engine.add(other)
    outcome = engine.step(outcome.end)
    assert engine.next_timer() == pytest.approx(outcome.end + 30.0)
    engine.step(outcome.end + 29.0)
    assert engine.num_leases() == 1
    engine.step(outcome.end + 30.0)
    assert engine.num_leases() == 0 and engine.stats.leases_expired == 1 and engine.kv_usage() == 0.0


def test_decode_leg_waits_for_transfer_not_prefill(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(), "m")
    leg = req("d", tokens(101), out=3, remote_prefill=True)
    engine.add(leg)
    idle = engine.step(0.0)
    assert idle.batch_size == 0 and engine.num_waiting == 1 and engine.num_running == 0
    transfer = 0.002 + 100 * 0.00001
    assert engine.next_timer() == pytest.approx(transfer)
    steps = run(engine)
    assert all(s.prefill_tokens == 0 for s in steps)
    assert leg.first_token_at == pytest.approx(transfer + 0.001 + 0.0001)
    assert leg.cached_tokens == 100 and leg.output_done == 3
    assert engine.stats.remote_decode == 1


@pytest.mark.parametrize("transferring", [False, True])
def test_a_decode_leg_whose_pull_failed_prefills_locally(
    profile_factory: ProfileFactory, run: RunFn, transferring: bool
) -> None:
    """vLLM's `recompute` policy, whether the leg is still queued or its transfer had started:
    the transfer's blocks go back, and the prompt is computed here as any request's."""
    engine = Engine(profile_factory(), "m")
    leg = req("d", tokens(101), out=3, remote_prefill=True)
    engine.add(leg)
    if transferring:
        engine.step(0.0)
        assert leg.state is State.TRANSFERRING and engine.kv_usage() > 0
    engine.recompute_locally(leg)
    steps = run(engine)
    assert [s.prefill_tokens for s in steps] == [101, 0, 0]
    assert (leg.cached_tokens, leg.output_done, leg.finish_reason) == (0, 3, "length")
    assert engine.kv_usage() == 0.0 and engine.num_waiting == 0


def test_abort_frees_everything(profile_factory: ProfileFactory) -> None:
    engine = Engine(profile_factory(max_num_seqs=1), "m")
    running, queued = req("a", tokens(40), out=10), req("b", tokens(40, 500), out=10)
    engine.add(running)
    engine.add(queued)
    engine.step(0.0)
    assert engine.kv_usage() > 0
    engine.abort(running)
    engine.abort(queued)
    assert (engine.num_running, engine.num_waiting, engine.kv_usage()) == (0, 0, 0.0)
    assert not engine.has_work() and engine.stats.requests_aborted == 2


def test_kv_events_chain(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(max_num_batched_tokens=32), "m", record_kv_events=True)
    r = req("a", tokens(70), out=1, lora=None)
    engine.add(r)
    run(engine)
    stored = [e for e in engine.drain_kv_events() if isinstance(e, BlockStored)]
    hashes = r.block_hashes or []
    # prefill in 32-token chunks: each chunk completes two full blocks, chained to the previous one
    assert [e.block_hashes for e in stored] == [hashes[0:2], hashes[2:4]]
    assert [e.parent_block_hash for e in stored] == [None, hashes[1]]
    assert stored[1].token_ids == tokens(70)[32:64]


def test_a_salted_requests_first_block_carries_the_salt_in_its_extra_keys(
    profile_factory: ProfileFactory, run: RunFn
) -> None:
    """vLLM's BlockStored: per block its extra keys, the cache salt in block 0's only."""
    engine = Engine(profile_factory(max_num_batched_tokens=32), "m", record_kv_events=True)
    engine.add(req("a", tokens(70), out=1, cache_salt="tenant-a"))
    run(engine)
    engine.add(req("b", tokens(70, start=5000), out=1))
    run(engine)
    stored = [e for e in engine.drain_kv_events() if isinstance(e, BlockStored)]
    keys = {tuple(e.token_ids[:1]): e.extra_keys for e in stored}
    assert keys == {(1000,): [["tenant-a"], None], (1032,): None, (5000,): None, (5032,): None}


def test_embedding_style_request_produces_no_tokens(profile_factory: ProfileFactory, run: RunFn) -> None:
    engine = Engine(profile_factory(), "m")
    r = req("e", tokens(30), out=0, stop_reason="stop")
    engine.add(r)
    steps = run(engine)
    assert len(steps) == 1 and r.output_done == 0 and r.finish_reason == "stop"
    assert engine.stats.generation_tokens == 0 and engine.stats.prompt_tokens == 30


def _served_order(engine: Engine, run: RunFn, requests: list[Request]) -> list[str]:
    for r in requests:
        engine.add(r)
    run(engine)
    return [r.id for r in sorted(requests, key=lambda r: r.first_token_at or 0.0)]


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("fcfs", ["low", "mid-late", "high", "mid-early"]),  # arrival order, priority ignored
        ("priority", ["high", "mid-early", "mid-late", "low"]),  # lower value first, then arrival
    ],
)
def test_a_scheduling_policy_orders_the_waiting_queue(
    profile_factory: ProfileFactory, run: RunFn, policy: str, served: list[str]
) -> None:
    engine = Engine(profile_factory(max_num_seqs=1), "m", scheduling_policy=policy)
    requests = [
        req("low", tokens(16, 0), at=0.0, priority=5),
        req("mid-late", tokens(16, 100), at=3.0),
        req("high", tokens(16, 200), at=1.0, priority=-1),
        req("mid-early", tokens(16, 300), at=2.0),
    ]
    assert _served_order(engine, run, requests) == served


def test_priority_queue_keeps_its_order_through_removals() -> None:
    """Removed requests leave dead heap entries behind, skipped at the head or swept out;
    what remains comes out in (priority, arrival, queue order), and a removed request can
    be queued again (preempted requests come back)."""
    queue = PriorityQueue()
    requests = [req(f"r{i}", tokens(4), at=float(i % 7), priority=i % 3) for i in range(60)]
    for r in requests:
        queue.add(r)
    removed = requests[::2] + requests[1::6] + [requests[1]]  # r1 twice: the second is a no-op
    for r in removed:
        queue.remove(r)
    queue.add(requests[0])  # back after removal: queued last among its equals
    kept = [r for r in requests if r not in removed] + [requests[0]]
    expected = sorted(kept, key=lambda r: (r.priority, r.arrival))  # stable: ties in queue order
    assert len(queue) == len(expected)
    assert [r.id for r in queue] == [r.id for r in expected]
    assert queue.peek() is expected[0]
    assert [queue.pop_first().id for _ in expected] == [r.id for r in expected]
    assert len(queue) == 0 and not queue


def test_unknown_scheduling_policy_is_refused(profile_factory: ProfileFactory) -> None:
    with pytest.raises(ValueError, match="unknown scheduling policy 'lifo'; known: fcfs, priority"):
        Engine(profile_factory(), "m", scheduling_policy="lifo")


def test_priority_policy_preempts_the_lowest_priority_even_if_admitted_first(
    profile_factory: ProfileFactory, run: RunFn
) -> None:
    # As test_preemption_under_block_pressure, where FCFS preempts `second` (admitted last); here
    # `first` has the higher priority value, so it is the one preempted, and finishes last.
    engine = Engine(profile_factory(num_gpu_blocks=6), "m", scheduling_policy="priority")
    first = req("first", tokens(16, 0), out=40, at=0.0, priority=1)
    second = req("second", tokens(16, 1000), out=40, at=1.0, priority=0)
    engine.add(first)
    engine.add(second)
    steps = run(engine)
    preempted = [r.id for s in steps for r in s.preempted]
    assert preempted and set(preempted) == {"first"}
    assert engine.stats.preemptions == len(preempted)
    assert first.output_done == 40 and second.output_done == 40
    assert first.finished_at > second.finished_at  # type: ignore[operator]
    assert engine.kv_usage() == 0.0


def test_priority_preemption_takes_a_request_already_scheduled_in_the_step(
    profile_factory: ProfileFactory,
) -> None:
    """The victim is earlier in the running list than the request short of a block: it leaves
    the step's batch and its token goes back to the budget (vLLM's `req_index -= 1`). `low` is
    admitted a step before `high`; both need a new block in step 18 (`low` for position 32, `high`,
    with a 33-token prompt, for 48) when one of the 6 usable blocks is free: `low` takes it, then `high` is
    short and `low`, last in priority order, is preempted out of the batch."""
    engine = Engine(profile_factory(num_gpu_blocks=7), "m", scheduling_policy="priority")
    low = req("low", tokens(16, 0), out=40, at=0.0, priority=1)
    high = req("high", tokens(33, 1000), out=40, at=1.0, priority=0)
    engine.add(low)
    outcome = engine.step(0.0)
    engine.add(high)
    steps = 1
    while not (outcome := engine.step(outcome.end)).preempted:
        steps += 1
    assert steps + 1 == 18
    assert [r.id for r in outcome.preempted] == ["low"]
    assert (outcome.batch_size, outcome.decode_seqs) == (1, 1)  # `high` decodes alone
    assert low.state is State.WAITING and low.computed == 0 and low.output_done == 17
    assert high.state is State.RUNNING and high.output_done == 17


def lazy_and_eager_steps(
    run: RunFn, profile: Profile, requests: Callable[[], list[Request]]
) -> list[list[object]]:
    """Run the same requests through an eager engine and a ``lazy_counters`` one; assert every
    step, the KV events and the finished requests' counters agree, and return the steps."""
    traces = []
    for lazy in (False, True):
        engine = Engine(profile, "m", record_kv_events=True, lazy_counters=lazy)
        batch = requests()
        for r in batch:
            assert engine.add(r) is None
        steps: list[list[object]] = []
        for s in run(engine):
            ids = [[r.id for r in group] for group in (s.emitted, s.first_tokens, s.finished, s.preempted)]
            steps.append([s.start, s.duration, s.gaps, *ids])
        stats = [getattr(engine.stats, f.name) for f in dataclasses.fields(engine.stats)]
        stats = [[s.counts, s.total, s.count] if isinstance(s, Histogram) else s for s in stats]
        steps.append([engine.drain_kv_events(), stats])
        steps.append([(r.output_done, r.first_token_at, r.finished_at, r.free_slots) for r in batch])
        traces.append(steps)
    assert traces[0] == traces[1]
    return traces[1]


def test_lazy_counters_allocate_a_lone_decoders_blocks(profile_factory: ProfileFactory, run: RunFn) -> None:
    """A cohort of one request crossing block boundaries: each block at the step it is needed."""
    steps = lazy_and_eager_steps(run, profile_factory(), lambda: [req("a", tokens(20), out=70)])
    assert len(steps) == 70 + 2


def test_lazy_counters_give_way_to_preemption(profile_factory: ProfileFactory, run: RunFn) -> None:
    """Decoders that run out of blocks together: the step that preempts is the general one."""
    steps = lazy_and_eager_steps(
        run,
        profile_factory(num_gpu_blocks=12),
        lambda: [req(f"r{i}", tokens(30, 1000 * i), out=60) for i in range(3)],
    )
    assert any(step[6] for step in steps[:-2])  # something was preempted


def test_block_zero_is_vllms_null_block(profile_factory: ProfileFactory) -> None:
    """vLLM's num_gpu_blocks counts its null block (id 0, a placeholder never handed out): requests
    get at most num_gpu_blocks - 1 blocks, KV usage is the blocks held over num_gpu_blocks - 1,
    and cache_config_info still reports num_gpu_blocks."""
    engine = Engine(profile_factory(num_gpu_blocks=5), "m", lease_seconds=30.0)
    assert engine.add(req("long", tokens(64), out=1)) is Rejection.TOO_LONG  # 5 blocks, 4 usable
    leg = req("p", tokens(48), out=1, hold_blocks=True)
    assert engine.add(leg) is None
    engine.step(0.0)
    assert leg.state is State.DONE and len(leg.leased_blocks) == 3 and 0 not in leg.leased_blocks
    assert engine.kv_usage() == pytest.approx(3 / 4)
    assert 'num_gpu_blocks="5"' in render(build_registry(engine, "m")).decode()


def test_an_engine_needs_a_block_besides_the_null_block(profile_factory: ProfileFactory) -> None:
    with pytest.raises(ValueError, match="num_gpu_blocks must be at least 2"):
        Engine(profile_factory(num_gpu_blocks=1), "m")


def test_a_request_scheduled_after_another_in_the_same_step_hits_its_blocks(
    profile_factory: ProfileFactory, run: RunFn
) -> None:
    """vLLM caches a chunk's full blocks when it allocates them (allocate_slots, before the forward
    pass), so a request scheduled later in the same step already hits them: the second of two
    identical 64-token prompts arriving together computes one block, not four."""
    engine = Engine(profile_factory(), "m")
    first, second = req("a", tokens(64)), req("b", tokens(64))
    engine.add(first)
    engine.add(second)
    steps = run(engine)
    assert (first.cached_tokens, second.cached_tokens) == (0, 48)
    assert steps[0].prefill_tokens == 64 + 16


def _stores_and_removals(engine: Engine) -> list[tuple[str, list[int], int | None]]:
    """The engine's KV events since the last drain: (kind, hashes, parent)."""
    return [
        ("stored", e.block_hashes, e.parent_block_hash)
        if isinstance(e, BlockStored)
        else ("removed", e.block_hashes, None)
        for e in engine.drain_kv_events()
        if isinstance(e, BlockStored | BlockRemoved)
    ]


@pytest.mark.parametrize("together", [True, False])
def test_a_recomputed_last_block_is_cached_again_as_a_duplicate(
    profile_factory: ProfileFactory, run: RunFn, together: bool
) -> None:
    """Two identical 64-token prompts: the second hits three blocks (vLLM recomputes the last
    prompt token, so the last block too) and caches its own copy of the fourth under the same
    hash, which vLLM announces (BlockHashToBlockMap holds both). Scheduled in the same step, its
    store follows the first's in that step's events; in a later step, in that step's."""
    engine = Engine(profile_factory(), "m", record_kv_events=True)
    first, second = req("a", tokens(64), out=1), req("b", tokens(64), out=1)
    h = first_hashes = engine.add(first) or first.block_hashes
    assert first_hashes is not None and len(h) == 4
    if together:
        engine.add(second)
        engine.step(0.0)
        events = [_stores_and_removals(engine)]
    else:
        engine.step(0.0)
        events = [_stores_and_removals(engine)]
        engine.add(second)
        engine.step(1.0)
        events.append(_stores_and_removals(engine))
    run(engine, 2.0)
    assert (first.cached_tokens, second.cached_tokens) == (0, 48)
    stored = [("stored", h, None), ("stored", h[3:], h[2])]
    assert events == ([stored] if together else [stored[:1], stored[1:]])
    assert engine.pool.num_cached() == 5  # h[3] twice


def test_evicting_one_copy_of_a_duplicate_leaves_the_other_cached(
    profile_factory: ProfileFactory, run: RunFn
) -> None:
    """The first copy of a duplicated block is evicted (least recently freed): vLLM sends
    BlockRemoved of its hash, though its twin stays cached and a later prompt hits it. (llm-d's
    index drops the block from the pod on that event.)"""
    engine = Engine(profile_factory(num_gpu_blocks=7), "m", record_kv_events=True)  # 6 usable
    first, second = req("a", tokens(64), out=1), req("b", tokens(64), out=1)
    engine.add(first)
    run(engine)
    engine.add(second)
    run(engine)
    h = first.block_hashes
    assert h is not None
    assert _stores_and_removals(engine) == [("stored", h, None), ("stored", h[3:], h[2])]
    other = req("d", tokens(20, 5000), out=1)  # two blocks, one free without eviction
    engine.add(other)
    run(engine)
    assert other.block_hashes is not None
    assert _stores_and_removals(engine) == [("removed", h[3:], None), ("stored", other.block_hashes, None)]
    follow = req("c", tokens(80), out=1)
    engine.add(follow)
    run(engine)
    assert follow.cached_tokens == 64  # through the twin of the evicted block


@pytest.mark.parametrize("lazy", [False, True])
def test_a_follow_up_hits_the_blocks_of_the_previous_answer(
    profile_factory: ProfileFactory, run: RunFn, lazy: bool
) -> None:
    """vLLM hashes a request's blocks as generated tokens fill them and caches each when the step
    computing its last token is scheduled, announcing it with its token ids: a 40-token prompt
    answered with 40 tokens leaves blocks 0-3 cached (block 4's last token, the answer's last, is
    never computed), and a follow-up repeating prompt and answer hits all four."""
    engine = Engine(profile_factory(), "m", record_kv_events=True, lazy_counters=lazy)
    prompt = tokens(40)
    first = req("a", prompt, out=40)
    engine.add(first)
    run(engine)
    answer = first.token_ids(40, 80)
    assert len(answer) == 40 and answer != tokens(40, 40)
    events = [e for e in engine.drain_kv_events() if isinstance(e, BlockStored)]
    h = first.block_hashes
    assert h is not None and len(h) == 4  # block 4 (tokens 64-79) is never computed
    assert [(e.block_hashes, e.parent_block_hash, e.token_ids, e.lora_name) for e in events] == [
        (h[:2], None, prompt[:32], None),
        (h[2:3], h[1], prompt[32:] + answer[:8], None),
        (h[3:4], h[2], answer[8:24], None),
    ]
    follow = req("b", prompt + answer + tokens(20, 9000), out=1)
    engine.add(follow)
    run(engine)
    assert follow.cached_tokens == 64
