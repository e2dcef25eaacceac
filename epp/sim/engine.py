"""Clock-agnostic model of one vLLM V1 engine: continuous batching, chunked prefill, paged KV cache
with prefix caching, preemption, LoRA slots and P/D (NIXL-style) legs.

The engine never reads a clock and never awaits. A driver calls ``step(now)``, which schedules one
batch and advances the model to the END of that step; the returned ``StepOutcome`` says how long the
step takes and what it produced. The HTTP server sleeps ``duration`` (scaled) before releasing the
tokens to clients; a discrete-event simulator instead schedules the next step at ``outcome.end``.

Scheduling follows vLLM V1: running requests first (a decode token, or the next prefill chunk) in
admission order, then waiting requests while a token budget, ``max_num_seqs`` and free blocks
last. When a running request needs a block and none is free, a running request is preempted back
to the waiting queue and recomputed later (its cached full blocks usually survive, so
recomputation is mostly a prefix-cache hit). Which one, and the waiting order, is vLLM's
``--scheduling-policy``: ``fcfs`` (the default) waits in arrival order and preempts the most
recently admitted request to the head of the queue; ``priority`` waits in (``priority``,
arrival) order, lower values first, and preempts the running request last in that order, even
one already scheduled in this step (its tokens go back to the budget).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from epp.kvevents import KVEvent, next_block_hashes, prompt_block_hashes
from epp.sim.histogram import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS, Histogram
from epp.sim.kvcache import BlockPool, BlockTable
from epp.sim.profiles import Profile
from epp.sim.tokens import output_ids, sequence_seed


class Rejection(enum.Enum):
    """Why ``Engine.add`` refused a request."""

    QUEUE_FULL = "queue_full"
    TOO_LONG = "too_long"


SCHEDULING_POLICIES = ("fcfs", "priority")
"""vLLM's ``--scheduling-policy`` values."""


class State(enum.Enum):
    WAITING = "waiting"
    TRANSFERRING = "transferring"
    RUNNING = "running"
    DONE = "done"


class Request:
    """One sequence in the engine. Inputs are set by the caller; the rest is engine state that
    drivers may read (token counts, timestamps, ``cached_tokens``, ``lease_key``, ``leased_blocks``).
    Ids must be unique within an engine: a prefill leg's lease is keyed by its request id."""

    __slots__ = (
        "arrival",
        "block_hashes",
        "cache_salt",
        "cached_tokens",
        "finish_reason",
        "finished_at",
        "first_token_at",
        "free_slots",
        "hashed_blocks",
        "hold_blocks",
        "id",
        "last_token_at",
        "lease_key",
        "leased_blocks",
        "lora",
        "max_output",
        "next_hash",
        "output_done",
        "output_ids",
        "pending_tokens",
        "priority",
        "prompt_len",
        "prompt_tokens",
        "ready_at",
        "remote_prefill",
        "scheduled_at",
        "state",
        "step_tokens",
        "stop_reason",
        "table",
    )

    def __init__(
        self,
        id: str,
        prompt_tokens: Sequence[int],
        max_output: int,
        arrival: float,
        *,
        stop_reason: str = "length",
        lora: str | None = None,
        remote_prefill: bool = False,
        hold_blocks: bool = False,
        block_hashes: list[int] | None = None,
        priority: int = 0,
        cache_salt: str = "",
        output_ids: Callable[[int, int], list[int]] | None = None,
    ) -> None:
        """``max_output`` is the exact number of tokens to generate (0: prefill only, no token, as
        for embeddings); ``stop_reason`` is the finish reason reported when it is reached.
        ``remote_prefill``: decode leg whose prompt KV is pulled from a prefill server.
        ``hold_blocks``: prefill leg whose blocks stay leased for a decode server after it ends.
        ``block_hashes``: precomputed prompt block hashes (the engine computes them otherwise).
        ``priority``: vLLM's per-request priority (lower is served first under the priority
        scheduling policy; ignored under FCFS).
        ``cache_salt``: vLLM's per-request salt, hashed into the first prompt block (requests
        salted differently share no cached block; its KV event carries it in ``extra_keys``).
        ``output_ids(start, stop)``: the ids of generated tokens ``start`` to ``stop``, which its
        full blocks of generated tokens are hashed and announced with (by default the words
        ``epp.sim.tokens.output_text`` draws from a seed of the prompt)."""
        self.id = id
        self.prompt_tokens = prompt_tokens
        self.prompt_len = len(prompt_tokens)
        self.max_output = max_output
        self.arrival = arrival
        self.stop_reason = stop_reason
        self.lora = lora
        self.remote_prefill = remote_prefill
        self.hold_blocks = hold_blocks
        self.block_hashes = block_hashes
        self.priority = priority
        self.cache_salt = cache_salt
        self.output_ids = output_ids
        self.state = State.WAITING
        self.output_done = 0
        # The per-step work on a running request reads only these small counters, never the
        # request's block table, hash list or token counts (integers beyond 256 are separate
        # objects): at a thousand engines each such read is a likely cache miss, and together
        # they cost a decode step about as much as all its other work.
        self.pending_tokens = self.prompt_len  # to compute before the next output (see computed)
        self.free_slots = 0  # tokens the held blocks can take beyond ``computed``
        self.hashed_blocks = 0  # len(block_hashes), once added (it grows as tokens fill blocks)
        self.next_hash = 0
        self.step_tokens = 0
        self.cached_tokens: int | None = None
        self.table = BlockTable()
        self.scheduled_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at = 0.0
        self.finished_at: float | None = None
        self.ready_at = 0.0
        self.finish_reason: str | None = None
        self.lease_key: str | None = None
        self.leased_blocks: list[int] = []

    def token_ids(self, start: int, stop: int) -> list[int]:
        """Token ids ``start`` to ``stop`` of the sequence: the prompt's, then generated ones."""
        prompt_len = self.prompt_len
        ids = list(self.prompt_tokens[start:stop]) if start < prompt_len else []
        if stop > prompt_len:
            first = max(start, prompt_len) - prompt_len
            if self.output_ids is None:
                seed = sequence_seed(self.prompt_tokens, 0)
                self.output_ids = lambda begin, end: output_ids(seed, begin, end)
            ids += self.output_ids(first, stop - prompt_len)
        return ids

    @property
    def computed(self) -> int:
        """Tokens whose KV is computed: the prompt, then every generated token but the newest."""
        return self.prompt_len + self.output_done - self.pending_tokens

    @computed.setter
    def computed(self, value: int) -> None:
        self.pending_tokens = self.prompt_len + self.output_done - value

    def __repr__(self) -> str:
        return f"Request({self.id!r}, {self.state.value}, computed={self.computed}, out={self.output_done})"


@dataclass(slots=True)
class StepOutcome:
    """One scheduled step: its duration and what it produced by its end (``start + duration``).
    ``emitted`` got one new token each (do not modify it: a decode-only step may hand out the
    engine's own running list); of them, ``first_tokens`` got their first, and ``gaps`` holds the
    others' inter-token gaps (``end`` less their previous token's end), in ``emitted`` order.
    ``finished`` ended (reason in ``finish_reason``)."""

    start: float
    duration: float = 0.0
    batch_size: int = 0
    prefill_tokens: int = 0
    decode_seqs: int = 0
    emitted: list[Request] = field(default_factory=list)
    first_tokens: list[Request] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(slots=True)
class EngineStats:
    """Monotonic counters and latency histograms (seconds of engine time)."""

    requests_added: int = 0
    requests_rejected: int = 0
    requests_aborted: int = 0
    prefill_only: int = 0
    remote_decode: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    cached_tokens_served: int = 0
    leases_expired: int = 0
    leases_released: int = 0
    steps: int = 0
    busy_seconds: float = 0.0
    finished: dict[str, int] = field(default_factory=dict)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))


class FcfsQueue(deque[Request]):
    """vLLM's FCFS waiting queue: arrival order; a request coming back (preempted, or its KV
    transfer done) goes to the head."""

    def add(self, request: Request) -> None:
        self.append(request)

    def prepend(self, request: Request) -> None:
        self.appendleft(request)

    def prepend_all(self, requests: list[Request]) -> None:
        """Put back requests taken from the head, in their order."""
        self.extendleft(reversed(requests))

    def peek(self) -> Request:
        return self[0]

    def pop_first(self) -> Request:
        return self.popleft()


class PriorityQueue:
    """vLLM's priority waiting queue: always (``priority``, arrival) order, lower first, however a
    request comes back (ties: the order they were queued). Removal only forgets the request: its
    heap entry, now dead, is dropped when it reaches the head, or in a sweep once the dead
    outnumber the live, so aborting n waiting requests costs O(n log n), not O(n²)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._live: dict[Request, int] = {}  # request -> queue number of its live heap entry
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Request]:
        """In serving order, as vLLM iterates it."""
        live = self._live
        return (entry[3] for entry in sorted(self._heap) if live.get(entry[3]) == entry[2])

    def add(self, request: Request) -> None:
        order = next(self._order)
        self._live[request] = order
        heapq.heappush(self._heap, (request.priority, request.arrival, order, request))

    prepend = add

    def prepend_all(self, requests: list[Request]) -> None:
        for request in requests:
            self.add(request)

    def peek(self) -> Request:
        return self._heap[0][3]

    def pop_first(self) -> Request:
        request = heapq.heappop(self._heap)[3]
        del self._live[request]
        self._drop_dead_head()
        return request

    def remove(self, request: Request) -> None:
        if self._live.pop(request, None) is None:
            return
        if len(self._heap) > 2 * len(self._live):
            live = self._live
            self._heap = [entry for entry in self._heap if live.get(entry[3]) == entry[2]]
            heapq.heapify(self._heap)
        else:
            self._drop_dead_head()

    def _drop_dead_head(self) -> None:
        """Keep a live entry at the head, so ``peek`` reads it directly."""
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][3]) != heap[0][2]:
            heapq.heappop(heap)


def _by_position(due: tuple[int, int, Request]) -> tuple[int, int]:
    """A cohort's due entry (tick, running position, request) in running order, then tick."""
    return due[1], due[0]


def _priority_order(request: Request) -> tuple[int, float]:
    return request.priority, request.arrival


class _Batch:
    """The requests one step runs and the batch composition its duration depends on, summed while
    scheduling so the step needs no second pass over the batch to price it."""

    __slots__ = ("attention_pairs", "budget", "decode_context", "decode_seqs", "prefill_tokens", "requests")

    def __init__(self, budget: int) -> None:
        self.requests: list[Request] = []
        self.budget = budget
        self.decode_seqs = 0
        self.decode_context = 0
        self.prefill_tokens = 0
        self.attention_pairs = 0

    def add(self, request: Request, n: int) -> None:
        """Schedule ``n`` tokens of ``request``: one is a decode step, more a prefill chunk."""
        request.step_tokens = n
        self.requests.append(request)
        self.budget -= n
        if n == 1:
            self.decode_seqs += 1
            self.decode_context += request.computed + 1
        else:
            self.prefill_tokens += n
            self.attention_pairs += n * request.computed + n * n // 2


@dataclass(slots=True)
class _Lease:
    table: BlockTable
    expires_at: float


class Engine:
    """See the module docstring. ``namespace`` (the served model name) seeds block hashes of
    requests without a LoRA adapter; adapter requests are seeded by the adapter name."""

    def __init__(
        self,
        profile: Profile,
        namespace: str,
        *,
        lease_seconds: float = 30.0,
        record_kv_events: bool = False,
        scheduling_policy: str = "fcfs",
        lazy_counters: bool = False,
    ) -> None:
        """``scheduling_policy``: vLLM's ``--scheduling-policy`` (see the module docstring).
        ``lazy_counters``: step a batch of steady decoders without touching its requests (see
        ``_decode_step``); their ``output_done``, ``free_slots``, ``last_token_at`` and
        ``computed`` are then stale between steps, except for requests in the outcome's
        ``first_tokens`` and ``finished``, until ``sync_counters()``. For a caller that reads
        only those (the virtual-time benchmark), not one streaming running requests' tokens."""
        if scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(
                f"unknown scheduling policy {scheduling_policy!r}; known: {', '.join(SCHEDULING_POLICIES)}"
            )
        self.scheduling_policy = scheduling_policy
        self.profile = profile
        self.namespace = namespace
        self.lease_seconds = lease_seconds
        self.block_size = profile.block_size
        if profile.num_gpu_blocks < 2:
            raise ValueError(
                f"num_gpu_blocks must be at least 2 (one is vLLM's null block), got {profile.num_gpu_blocks}"
            )
        # vLLM's num_gpu_blocks counts its null block (id 0), which is never handed out
        self.pool = BlockPool(profile.num_gpu_blocks - 1, profile.block_size, record_kv_events)
        self.stats = EngineStats()
        self._waiting: FcfsQueue | PriorityQueue = (
            PriorityQueue() if scheduling_policy == "priority" else FcfsQueue()
        )
        self._running: list[Request] = []
        self._transferring: list[Request] = []
        self._running_loras: dict[str, int] = {}
        self._leases: dict[str, _Lease] = {}
        # sum of ``computed`` over _running, so pricing a step's decode context reads no request
        self._running_context = 0
        self.lazy_counters = lazy_counters
        # A cohort: every running request is a steady decoder whose counters were last written
        # ``_ticks`` steps ago (see ``_decode_step``).
        self._cohort = False
        self._ticks = 0
        self._last_end = 0.0
        self._finish_tick = 0
        self._next_block_tick = 0  # the next tick at which some request needs or fills a block
        self._block_due: list[tuple[int, int, Request]] = []  # (tick, position, request) heap
        self._fill_due: list[tuple[int, int, Request]] = []  # the same, of a block to cache

    # ----- read-only state -------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Queued requests, including decode legs waiting for their KV transfer (as vLLM counts)."""
        return len(self._waiting) + len(self._transferring)

    def kv_usage(self, blocks_taken: int = 0) -> float:
        """Fraction of the usable KV blocks (vLLM's: all but the null block) held by requests and
        prefill leases; ``blocks_taken``: blocks the driver's steps of the cohort took that the
        engine has not been told of yet (see ``decode_ahead``)."""
        return (self.pool.num_in_use() + blocks_taken) / self.pool.num_blocks

    def running_loras(self) -> list[str]:
        return sorted(self._running_loras)

    def waiting_loras(self) -> list[str]:
        queued = [*self._waiting, *self._transferring]
        return sorted({r.lora for r in queued if r.lora})

    def num_leases(self) -> int:
        return len(self._leases)

    def has_work(self) -> bool:
        """Whether ``step`` would schedule something now or after ``next_timer()``."""
        return bool(self._running or self._waiting or self._transferring or self._leases)

    def next_timer(self) -> float | None:
        """Earliest engine time at which something happens without new input: a KV transfer
        completes or a prefill lease expires. Idle drivers sleep until then."""
        times = [r.ready_at for r in self._transferring]
        times.extend(lease.expires_at for lease in self._leases.values())
        return min(times) if times else None

    def drain_kv_events(self) -> list[KVEvent]:
        return self.pool.drain_events()

    # ----- input -----------------------------------------------------------------------------

    def add(self, request: Request) -> Rejection | None:
        """Queue ``request``; returns why it was refused, or None."""
        if request.prompt_len == 0:
            raise ValueError("a request needs at least one prompt token")
        bs = self.block_size
        total = request.prompt_len + request.max_output
        if total > self.profile.max_model_len or -(-total // bs) > self.pool.num_blocks:
            self.stats.requests_rejected += 1
            return Rejection.TOO_LONG
        if self.num_waiting >= self.profile.max_waiting:
            self.stats.requests_rejected += 1
            return Rejection.QUEUE_FULL
        if request.block_hashes is None:
            request.block_hashes = prompt_block_hashes(
                request.prompt_tokens, bs, request.lora or self.namespace, salt=request.cache_salt
            )
        else:  # the request's own list: generated tokens extend it
            request.block_hashes = list(request.block_hashes)
        request.hashed_blocks = len(request.block_hashes)
        self.stats.requests_added += 1
        self.stats.prefill_only += request.hold_blocks
        self.stats.remote_decode += request.remote_prefill
        self._waiting.add(request)
        return None

    def abort(self, request: Request) -> None:
        """Drop ``request`` wherever it is (client went away) and free its blocks."""
        self.sync_counters()
        if request.state is State.DONE:
            return
        if request.state is State.RUNNING:
            self._running.remove(request)
            self._running_context -= request.computed
            self._lora_stopped(request)
        elif request.state is State.TRANSFERRING:
            self._transferring.remove(request)
        else:
            self._waiting.remove(request)
        self.pool.release(request.table)
        request.state = State.DONE
        request.finish_reason = "abort"
        self.stats.requests_aborted += 1

    def recompute_locally(self, request: Request) -> None:
        """vLLM's `recompute` KV-load-failure policy: a decode leg whose KV could not be read
        computes its prompt here. Still waiting, it is admitted as any request; transferring, its
        reserved blocks go back and it returns to the head of the queue. One already past its
        modelled transfer (the failure came later) keeps going."""
        if not request.remote_prefill:
            return
        request.remote_prefill = False
        if request.state is State.TRANSFERRING:
            self._transferring.remove(request)
            self.pool.release(request.table)
            request.next_hash = 0
            request.state = State.WAITING
            self._waiting.prepend(request)

    def abort_all(self) -> list[Request]:
        """Abort every request the engine holds (the server is shutting down); returns them."""
        requests = [*self._running, *self._waiting, *self._transferring]
        for request in requests:
            self.abort(request)
        return requests

    def reset_prefix_cache(self) -> bool:
        """Drop all cached blocks; False (nothing done) while requests or leases hold blocks."""
        return self.pool.clear_cache()

    def release_lease(self, lease_key: str) -> int | None:
        """A decode server has read the blocks of lease ``lease_key`` (a prefill leg's
        ``lease_key``): free them (shared prompt blocks stay cached). Returns the number of blocks,
        or None if no such lease exists. Keys are request ids, never reused, whereas block ids
        are: a late or repeated release can only miss, never free another request's lease."""
        lease = self._leases.pop(lease_key, None)
        if lease is None:
            return None
        count = len(lease.table.ids)
        self.pool.release(lease.table)
        self.stats.leases_released += 1
        return count

    # ----- stepping --------------------------------------------------------------------------

    def step(self, now: float) -> StepOutcome:
        """Schedule and run one step starting at ``now``. ``batch_size == 0`` means nothing could
        run (idle; wait for new input or ``next_timer()``)."""
        if self._cohort:
            if (
                now == self._last_end
                and self._ticks < self._finish_tick
                and not self._leases
                and not self._transferring
                and not (self._waiting and len(self._running) < self.profile.max_num_seqs)
            ):
                outcome = self._decode_step(now)
                if outcome is not None:
                    return outcome
            self.sync_counters()
        if self._leases:
            self._expire_leases(now)
        if self._transferring:
            self._finish_transfers(now)
        outcome = StepOutcome(now)
        batch = _Batch(self.profile.max_num_batched_tokens)
        if self._running:
            if self.scheduling_policy == "priority":
                self._schedule_running_by_priority(batch, outcome)
            else:
                self._schedule_running(batch, outcome)
        if (
            self._waiting
            and not outcome.preempted
            and batch.budget > 0
            and len(self._running) < self.profile.max_num_seqs
        ):
            self._schedule_waiting(now, batch)
        if batch.requests:
            self._run(batch, outcome)
        return outcome

    def sync_counters(self) -> None:
        """End the cohort, if any: write each running request's counters as of the last step."""
        if not self._cohort:
            return
        self._cohort = False
        self._block_due.clear()
        self._fill_due.clear()
        ticks = self._ticks
        if not ticks:
            return
        end = self._last_end
        bs = self.block_size
        filled = 1 % bs
        for request in self._running:
            request.output_done += ticks
            request.free_slots -= ticks
            request.last_token_at = end
            if request.free_slots % bs == filled:  # as `_run` hashes it after the last step
                self._hash_filled_blocks(request, (request.prompt_len + request.output_done) // bs)
        self._running = list(self._running)  # step outcomes hold the old one as ``emitted``

    def decode_ahead(self) -> tuple[int, int, float, float, list[int]] | None:
        """For a driver that takes a cohort's plain steps itself (the virtual-time benchmark's
        event queue): after a step of the cohort, how many of the next steps only advance its
        counters (no request's last token, nothing to admit, no lease or KV transfer to see to,
        and the blocks they need free without evicting a cached one), the batch's decode context
        now, a step's duration as ``base + kv * context`` once ``context`` has grown by the batch
        size, and the blocks each step takes: ``(left, context, base, kv, blocks)``.
        ``Profile.step_seconds`` for this batch summed in the same order (its prefill terms are
        zeros, which leave the sum as it is). None when there are none. Those steps' blocks are
        allocated when the driver reports the steps (``took_decode_steps``), in the order the
        steps would have: nothing else touches this engine's pool meanwhile, and its KV usage
        counts them through ``kv_usage(blocks_taken)``. Input to the engine ends them, so the
        driver reports the steps taken before anything else calls the engine."""
        if not (self._cohort and self._ticks):  # the last step was not a cohort step
            return None
        if (
            self._leases
            or self._transferring
            or (self._waiting and len(self._running) < self.profile.max_num_seqs)
        ):
            return None
        start = self._ticks
        left = self._finish_tick - start
        if left <= 0:
            return None
        blocks = [0] * left
        bs = self.block_size
        due = self._block_due or [(r.free_slots, 0, r) for r in self._running]
        for tick, _, _ in due:  # each request's next tick of need (see _decode_step), then every bs
            for at in range(tick - start, left, bs):
                blocks[at] += 1
        room = self.pool.num_free_without_eviction()
        for at, count in enumerate(blocks):
            room -= count
            if room < 0:  # that step evicts or preempts: the engine takes it
                del blocks[at:]
                left = at
                break
        if left <= 0:
            return None
        profile = self.profile
        base = profile.step_base_s + profile.decode_seq_s * len(self._running)
        return left, self._running_context, base, profile.kv_read_token_s, blocks

    def took_decode_steps(
        self,
        steps: int,
        context: int,
        last_end: float,
        busy_seconds: float,
        itl_total: float,
        itl_adds: Sequence[int],
    ) -> None:
        """``steps`` plain steps of the cohort taken by the driver (see ``decode_ahead``): the
        decode context and the last step's end after them, the running sums ``busy_seconds`` and
        the ITL histogram's total (each step added in order, as ``_decode_step`` adds them) and
        the counts its steps added to each ITL bucket."""
        n = len(self._running)
        end = self._ticks + steps
        while self._next_block_tick < end:  # the blocks those steps took and filled, in order
            allocated = self._allocate_due(self._next_block_tick)
            assert allocated, "decode_ahead counted the blocks free"
        self._ticks = end
        self._running_context = context
        self._last_end = last_end
        stats = self.stats
        stats.steps += steps
        stats.busy_seconds = busy_seconds
        stats.generation_tokens += n * steps
        itl = stats.itl
        itl.total = itl_total
        itl.count += n * steps
        counts = itl.counts
        for bucket, added in enumerate(itl_adds):
            counts[bucket] += added

    def _start_cohort(self, end: float) -> None:
        """After a step in which every running request emitted a token: they all decode one token
        a step from now on, until one finishes, runs out of blocks or another is admitted. Which
        request needs or fills a block when is worked out only if the cohort lasts until the
        first does (a request whose ``free_slots`` is f fills its block at tick (f - 1) mod the
        block size, then every block size, and needs a new one a tick later)."""
        first_block = finish = self.profile.max_model_len
        bs = self.block_size
        for request in self._running:
            free_slots = request.free_slots
            fill = (free_slots - 1) % bs
            if fill < free_slots:
                free_slots = fill
            if free_slots < first_block:
                first_block = free_slots
            left = request.max_output - request.output_done
            if left < finish:
                finish = left
        self._cohort = True
        self._ticks = 0
        self._last_end = end
        self._next_block_tick = first_block  # at that tick some request needs or fills a block
        self._finish_tick = finish - 1  # at that tick some request emits its last token

    def _decode_step(self, now: float) -> StepOutcome | None:
        """A step of the cohort, from the engine's counters: each request's own are advanced
        when the cohort ends (``sync_counters``), and read only for the requests needing a block
        now, the same in number and order as ``_schedule_running`` would allocate them. None if
        blocks are short (the step preempts: the general path takes it)."""
        ticks = self._ticks
        running = self._running
        if ticks == self._next_block_tick and not self._allocate_due(ticks):
            return None
        n = len(running)
        context = self._running_context + n
        duration = self.profile.step_seconds(n, context, 0, 0)
        end = now + duration
        self._running_context = context
        self._ticks = ticks + 1
        self._last_end = end
        stats = self.stats
        stats.steps += 1
        stats.busy_seconds += duration
        stats.itl.observe(duration, n)
        stats.generation_tokens += n
        return StepOutcome(now, duration, n, 0, n, running, [], [end - now] * n, [], [])

    def _allocate_due(self, ticks: int) -> bool:
        """A block for each request of the cohort needing one at tick ``ticks``, and the caching
        of each block the tick's token fills, in running order (as ``_schedule_running`` would
        allocate and cache them); False, having done nothing, if blocks are short."""
        due, fill = self._block_due, self._fill_due
        bs = self.block_size
        if not due:  # the requests' ticks of need and of filling, relative to the cohort's start
            due.extend((r.free_slots, position, r) for position, r in enumerate(self._running))
            fill.extend(((r.free_slots - 1) % bs, position, r) for position, r in enumerate(self._running))
            heapq.heapify(due)
            heapq.heapify(fill)
        needing = []
        while due and due[0][0] == ticks:
            needing.append(heapq.heappop(due))
        if len(needing) > self.pool.num_free():
            return False
        filling = []
        while fill and fill[0][0] == ticks:
            filling.append(heapq.heappop(fill))
        if filling:  # a request allocates before it caches (both only when the block size is 1)
            needing += [(ticks + 1, position, request) for _, position, request in filling]
            needing.sort(key=_by_position)
        for tick, position, request in needing:  # in running order, as the step would
            if tick == ticks:
                self.pool.allocate(request.table, 1)
                request.free_slots += bs
                heapq.heappush(due, (ticks + bs, position, request))
            else:
                blocks = len(request.table.ids)  # all full once this tick's token is in
                self._hash_filled_blocks(request, blocks)
                self._cache_full_blocks(request, blocks * bs)
                heapq.heappush(fill, (ticks + bs, position, request))
        self._next_block_tick = min(due[0][0], fill[0][0])
        return True

    def _schedule_running(self, batch: _Batch, outcome: StepOutcome) -> None:
        """Running requests in admission order, one decode token or the next prefill chunk each,
        while the token budget lasts. The hottest loop of the simulator (once per sequence per
        step), so it sums the batch composition in locals rather than through ``_Batch.add``,
        and gets the decode context (the sum of ``computed + 1`` over decoding requests) from the
        running total, less the requests that do not decode this step."""
        running = self._running
        scheduled = batch.requests
        budget = batch.budget
        decode_seqs = prefill = pairs = not_decoding = 0
        for request in running:  # preemption only pops requests after this one
            if budget <= 0:
                break
            n = request.pending_tokens
            if n > budget:
                n = budget
            if n > request.free_slots and not self._reserve_or_preempt(request, n, outcome):
                break
            request.step_tokens = n
            scheduled.append(request)
            budget -= n
            if request.next_hash < request.hashed_blocks:
                self._cache_full_blocks(request, request.computed + n)
            if n == 1:
                decode_seqs += 1
            else:
                computed = request.computed
                not_decoding += computed
                prefill += n
                pairs += n * computed + n * n // 2
        for request in running[len(scheduled) :]:
            not_decoding += request.computed
        batch.budget = budget
        batch.decode_seqs = decode_seqs
        batch.decode_context = self._running_context - not_decoding + decode_seqs
        batch.prefill_tokens = prefill
        batch.attention_pairs = pairs

    def _reserve_or_preempt(self, request: Request, n: int, outcome: StepOutcome) -> bool:
        """Give ``request`` the blocks its next ``n`` tokens need beyond its ``free_slots``,
        preempting the most recently admitted running requests while blocks are short. False if
        ``request`` itself was."""
        need = -((request.free_slots - n) // self.block_size)  # ceil(shortfall / block size)
        while need > self.pool.num_free():
            victim = self._running.pop()
            self._preempt(victim, outcome)
            if victim is request:
                return False
        self.pool.allocate(request.table, need)
        request.free_slots += need * self.block_size
        return True

    def _schedule_running_by_priority(self, batch: _Batch, outcome: StepOutcome) -> None:
        """`_schedule_running` under the priority policy: while blocks are short, the running
        request last in (priority, arrival) order is preempted, wherever it is in the running
        list; one already scheduled in this step leaves the batch and gives its tokens back."""
        running = self._running
        chosen: list[Request] = []
        budget = batch.budget
        index = 0
        while index < len(running) and budget > 0:
            request = running[index]
            n = min(request.pending_tokens, budget)
            if n > request.free_slots:
                need = -((request.free_slots - n) // self.block_size)
                while need > self.pool.num_free():
                    victim = max(running, key=_priority_order)
                    running.remove(victim)
                    if victim in chosen:
                        chosen.remove(victim)
                        budget += victim.step_tokens
                        index -= 1
                    self._preempt(victim, outcome)
                    if victim is request:
                        break
                if request.state is not State.RUNNING:
                    break
                self.pool.allocate(request.table, need)
                request.free_slots += need * self.block_size
            request.step_tokens = n
            chosen.append(request)
            budget -= n
            index += 1
            if request.next_hash < request.hashed_blocks:
                self._cache_full_blocks(request, request.computed + n)
        for request in chosen:
            batch.add(request, request.step_tokens)

    def _preempt(self, request: Request, outcome: StepOutcome) -> None:
        self.pool.release(request.table)
        self._lora_stopped(request)
        self._running_context -= request.computed
        request.computed = 0
        request.free_slots = 0
        request.next_hash = 0
        request.state = State.WAITING
        self._waiting.prepend(request)
        outcome.preempted.append(request)
        self.stats.preemptions += 1

    def _schedule_waiting(self, now: float, batch: _Batch) -> None:
        waiting = self._waiting
        skipped: list[Request] = []
        max_seqs = self.profile.max_num_seqs
        max_loras = self.profile.max_loras
        while waiting and batch.budget > 0 and len(self._running) < max_seqs:
            request = waiting.peek()
            lora = request.lora
            if lora and lora not in self._running_loras and len(self._running_loras) >= max_loras:
                skipped.append(waiting.pop_first())
                continue
            if request.remote_prefill:
                if not self._start_transfer(request, now):
                    break
                waiting.pop_first()
                continue
            n = self._admit(request, now, batch.budget)
            if n == 0:
                break
            waiting.pop_first()
            request.state = State.RUNNING
            self._running.append(request)
            self._running_context += request.computed
            if lora:
                self._running_loras[lora] = self._running_loras.get(lora, 0) + 1
            batch.add(request, n)
            if request.next_hash < request.hashed_blocks:
                self._cache_full_blocks(request, request.computed + n)
        if skipped:
            waiting.prepend_all(skipped)

    def _admit(self, request: Request, now: float, budget: int) -> int:
        """Reserve blocks for the next chunk of a waiting request, after a prefix-cache lookup if
        it holds no blocks yet. Returns the chunk size, 0 if blocks are short."""
        bs = self.block_size
        table = request.table
        hashes = request.block_hashes or []
        fresh = not table.ids
        # vLLM's lookup covers every token but the last (generated ones too, after a preemption)
        limit = (request.prompt_len + request.output_done - 1) // bs
        hit, unused = self.pool.match(hashes, limit) if fresh else (0, 0)
        computed = hit * bs if fresh else request.computed
        n = min(request.prompt_len + request.output_done - computed, budget)
        need = -(-(computed + n) // bs) - len(table.ids) - hit
        if need + unused > self.pool.num_free():
            return 0
        if fresh:
            self.pool.acquire(table, hashes[:hit])
            request.computed = computed
            request.next_hash = hit
            self.stats.prefix_queries += request.prompt_len
            self.stats.prefix_hits += computed
        if request.cached_tokens is None:
            request.cached_tokens = computed
            request.scheduled_at = now
            self.stats.queue_time.observe(now - request.arrival)
        self.pool.allocate(table, need)
        request.free_slots = len(table.ids) * bs - computed
        return n

    def _start_transfer(self, request: Request, now: float) -> bool:
        """Decode leg: reserve blocks for the prompt and start pulling the KV the local prefix
        cache does not already hold. The request waits (not running) until the data is in."""
        bs = self.block_size
        hashes = request.block_hashes or []
        hit, unused = self.pool.match(hashes, (request.prompt_len - 1) // bs)
        held_tokens = request.prompt_len - 1
        need = -(-held_tokens // bs) - hit
        if need + unused > self.pool.num_free():
            return False
        self.pool.acquire(request.table, hashes[:hit])
        self.pool.allocate(request.table, need)
        self.stats.prefix_queries += request.prompt_len
        self.stats.prefix_hits += hit * bs
        request.next_hash = hit
        request.ready_at = now + self.profile.kv_transfer_seconds(held_tokens - hit * bs)
        request.state = State.TRANSFERRING
        request.scheduled_at = now
        self.stats.queue_time.observe(now - request.arrival)
        self._transferring.append(request)
        return True

    def _finish_transfers(self, now: float) -> None:
        if not self._transferring:
            return
        done = [r for r in self._transferring if r.ready_at <= now]
        if not done:
            return
        self._transferring = [r for r in self._transferring if r.ready_at > now]
        for request in sorted(done, key=lambda r: r.ready_at, reverse=True):
            request.computed = request.prompt_len - 1
            request.cached_tokens = request.computed
            request.remote_prefill = False
            request.state = State.WAITING
            self._cache_full_blocks(request, request.computed)
            self._waiting.prepend(request)

    def _expire_leases(self, now: float) -> None:
        expired = [key for key, lease in self._leases.items() if lease.expires_at <= now]
        for key in expired:
            self.pool.release(self._leases.pop(key).table)
            self.stats.leases_expired += 1

    def _run(self, batch: _Batch, outcome: StepOutcome) -> None:
        """Advance every scheduled request by its tokens to the end of the step: emit the tokens
        of requests whose prompt is computed, finish the done (their blocks were cached as they
        were scheduled)."""
        scheduled = batch.requests
        start = outcome.start
        duration = self.profile.step_seconds(
            batch.decode_seqs, batch.decode_context, batch.prefill_tokens, batch.attention_pairs
        )
        end = start + duration
        outcome.duration = duration
        outcome.batch_size = len(scheduled)
        outcome.prefill_tokens = batch.prefill_tokens
        outcome.decode_seqs = batch.decode_seqs
        stats = self.stats
        stats.steps += 1
        stats.busy_seconds += duration
        # every scheduled request is running now, and computes its tokens
        self._running_context += self.profile.max_num_batched_tokens - batch.budget
        emitted = outcome.emitted
        emit = emitted.append
        gap = outcome.gaps.append
        steady_gap = end - start
        bs = self.block_size
        filled = 1 % bs  # free slots left when a request's newest token ends a block
        steady = 0  # decoding sequences whose previous token came at the end of the previous step
        for request in scheduled:
            n = request.step_tokens
            request.free_slots -= n
            pending = request.pending_tokens = request.pending_tokens - n  # computed += n
            if pending:
                continue
            output_done = request.output_done
            if output_done == 0:
                self._first_output(request, end, outcome)
            elif request.last_token_at == start:
                steady += 1
                gap(steady_gap)
            else:
                gap(end - request.last_token_at)
                stats.itl.observe(end - request.last_token_at)
            if request.max_output:
                output_done = request.output_done = output_done + 1
                request.pending_tokens = 1  # the new token, whose KV the next step computes
                request.last_token_at = end
                emit(request)
            if output_done >= request.max_output:
                self._finish(request, end, outcome)
            elif request.free_slots % bs == filled:  # the new token fills its block
                self._hash_filled_blocks(request, (request.prompt_len + output_done) // bs)
        if steady:
            stats.itl.observe(duration, steady)
        stats.generation_tokens += len(emitted)
        every_running_emitted = len(emitted) == len(scheduled) == len(self._running)
        if outcome.finished:
            self._running = [r for r in self._running if r.state is State.RUNNING]
        if every_running_emitted and self.lazy_counters and self._running:
            self._start_cohort(end)

    def _cache_full_blocks(self, request: Request, tokens: int) -> None:
        """Cache the request's full blocks up to ``tokens`` (prompt or generated, duplicates
        too) and record one ``BlockStored`` of them, as vLLM's cache_full_blocks does. Called as a
        chunk or a decode token is scheduled, before it is computed, as vLLM's allocate_slots
        caches them: a request scheduled later in the same step hits them."""
        hashes = request.block_hashes or []
        first = request.next_hash
        last = min(tokens // self.block_size, len(hashes))
        if first < last:
            self.pool.promote(request.table, first, hashes[first:last])
            if self.pool.events is not None:
                bs = self.block_size
                # vLLM's per-block extra keys: the salt in the first block's, nothing in the others'.
                salted = not first and request.cache_salt
                self.pool.record_stored(
                    hashes[first:last],
                    hashes[first - 1] if first else None,
                    request.token_ids(first * bs, last * bs),
                    request.lora,
                    [[request.cache_salt]] + [None] * (last - 1) if salted else None,
                )
        request.next_hash = last

    def _hash_filled_blocks(self, request: Request, full: int) -> None:
        """Extend the request's block hashes over its first ``full`` blocks (generated tokens
        included), as vLLM's Request does when tokens are appended; they are cached when the step
        computing their last token is scheduled."""
        bs = self.block_size
        hashes = request.block_hashes
        assert hashes is not None
        known = len(hashes)
        if full <= known:
            return
        if known:
            hashes += next_block_hashes(hashes[-1], request.token_ids(known * bs, full * bs), bs)
        else:  # a prompt shorter than a block: the chain (and salt) starts here
            hashes += prompt_block_hashes(
                request.token_ids(0, full * bs), bs, request.lora or self.namespace, salt=request.cache_salt
            )
        request.hashed_blocks = len(hashes)

    def _first_output(self, request: Request, end: float, outcome: StepOutcome) -> None:
        """Prefill done: count the prompt, and the first token's latency if one is generated."""
        stats = self.stats
        stats.prompt_tokens += request.prompt_len
        stats.cached_tokens_served += request.cached_tokens or 0
        if request.max_output:
            request.first_token_at = end
            stats.ttft.observe(end - request.arrival)
            outcome.first_tokens.append(request)

    def _finish(self, request: Request, end: float, outcome: StepOutcome) -> None:
        self._lora_stopped(request)
        self._running_context -= request.computed
        request.state = State.DONE
        request.finished_at = end
        request.finish_reason = request.stop_reason
        if request.hold_blocks:
            request.lease_key = request.id
            request.leased_blocks = list(request.table.ids)
            self._leases[request.id] = _Lease(request.table, end + self.lease_seconds)
            request.table = BlockTable()
        else:
            self.pool.release(request.table)
        stats = self.stats
        stats.finished[request.stop_reason] = stats.finished.get(request.stop_reason, 0) + 1
        stats.e2e.observe(end - request.arrival)
        outcome.finished.append(request)

    def _lora_stopped(self, request: Request) -> None:
        """Bookkeeping for a running request leaving the running set."""
        lora = request.lora
        if lora:
            count = self._running_loras[lora] - 1
            if count:
                self._running_loras[lora] = count
            else:
                del self._running_loras[lora]
