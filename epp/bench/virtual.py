"""Virtual-time engine: a discrete-event simulation of clients, the EPP and simulated servers.

Nothing here models routing or serving itself. Requests go through the EPP's own `Director`
(body parsing, candidates, the scheduler under test, in-flight accounting, the response hooks with
the usage the server reports), and every endpoint is the simulator's own `Engine` stepped exactly
as `epp sim`'s driver steps it: `step(now)` schedules a batch and returns its duration, the
produced tokens are released at the step's end, and an idle engine wakes on a new request or its
next timer. Endpoint metrics are refreshed from engine state every `scrape_interval`, as the
scraper would read the simulator's `/metrics` (same gauges: queue, running, KV usage, cache size).

Plugins get the virtual clock through their PluginContext, so TTLs and metric ages run in model
time. What the real-time path adds and this leaves out is the wire: HTTP, Envoy and ext_proc latency
(a millisecond or two) and CPU contention between processes. Latencies here are pure model time.

A workload's `churn` (epp.bench.churn) restarts and scales pods during the run through the
datastore, as discovery would: a leaving pod is removed from it (the EPP's plugins hear of it as
of any pool change, and its KV events go unheard, as the event reader drops a pod outside the
pool), drains, exits, and a restarted one comes back with a fresh engine (an empty cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from epp.bench.churn import Churn, ChurnEvent, schedule
from epp.bench.events import DecodeRun, new_decode_run, new_event_queue
from epp.bench.prompts import PromptTokenizer
from epp.bench.records import RequestRecord, RunResult
from epp.bench.vloop import VirtualTimeLoop
from epp.bench.workload import BenchRequest
from epp.config.build import build_director
from epp.config.model import PickerConfig
from epp.datastore import Datastore, Endpoint, EndpointMetrics, EndpointSpec
from epp.framework import PluginContext
from epp.kvevents import KVEvent
from epp.metrics.exporter import EppMetrics
from epp.plugins.token_producer import TokenProducer
from epp.requestcontrol import Director
from epp.requestcontrol.director import RoutedRequest
from epp.requests import ApiKind, InferenceRequest, RequestError
from epp.sim.engine import Engine, Rejection, Request, StepOutcome
from epp.sim.openai_api import ApiError, parse_chat, parse_completion, usage
from epp.sim.profiles import Profile

_REJECTION_STATUS = {Rejection.QUEUE_FULL: 429, Rejection.TOO_LONG: 400}
SERVER_PORT = 8000
# A streamed chat response's first frame, as vLLM sends it with the first output.
_FIRST_CHUNK = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'


@dataclass(frozen=True, slots=True)
class VirtualCluster:
    endpoints: int
    profile: Profile
    model: str = "sim-model"
    scrape_interval: float = 0.05
    seed: int = 0
    churn: Churn | None = None
    # vLLM's --scheduling-policy on every server ("priority": the body's `priority` orders them).
    scheduling_policy: str = "fcfs"


def endpoint_spec(cluster: VirtualCluster, index: int) -> EndpointSpec:
    """Pod number `index`: a distinct address and one server port, as a pod network would give."""
    return EndpointSpec(
        name=f"sim-{index}",
        address=f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}",
        port=SERVER_PORT,
        models=frozenset({cluster.model}),
    )


def endpoint_specs(cluster: VirtualCluster) -> list[EndpointSpec]:
    return [endpoint_spec(cluster, i) for i in range(cluster.endpoints)]


def scraped_metrics(engine: Engine, now: float, blocks_taken: int = 0) -> EndpointMetrics:
    """What the scraper reads from a simulator's /metrics (see epp.sim.metrics), from the engine
    (``blocks_taken``: by steps of its cohort the event queue took, see `Engine.decode_ahead`)."""
    return EndpointMetrics(
        waiting_queue_size=engine.num_waiting,
        running_requests_size=engine.num_running,
        kv_cache_usage=engine.kv_usage(blocks_taken),
        max_active_models=engine.profile.max_loras,
        cache_block_size=engine.block_size,
        cache_num_blocks=engine.profile.num_gpu_blocks,
        update_time=now,
    )


def forwarded_priority(routed: RoutedRequest) -> int:
    """vLLM's `priority` in the body the EPP forwards (0 when it forwards the client's, which the
    benchmark's requests never set)."""
    if routed.body is None:
        return 0
    value = orjson.loads(routed.body).get("priority", 0)
    return value if isinstance(value, int) else 0


@runtime_checkable
class KVEventSink(Protocol):
    """A plugin that follows the engines' prefix caches through their KV events."""

    def apply_kv_events(self, pod: str, events: Iterable[KVEvent], model: str = "") -> None:
        """`model`: the engine's served model (the topic's `<model>`)."""


def engine_token_ids(request: InferenceRequest) -> list[int] | None:
    """The prompt's token ids as the simulated engine computes them (its tokenizer and chat
    template): what vLLM's render API would answer."""
    try:
        parse = parse_chat if request.api is ApiKind.CHAT else parse_completion
        return parse(request.body).prompts[0]
    except (ApiError, IndexError, AttributeError):
        return None


class _FixedPoolDirector(Director):
    """Every endpoint serves the model, so candidates are the pool, computed again only when the
    pool changes; the base class filters every endpoint per request, which at 1,000 endpoints
    would cost more than most schedulers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool: list[Endpoint] = []
        self._stale = True
        self.datastore.subscribe(on_added=self._pool_changed, on_removed=self._pool_changed)

    def _pool_changed(self, _: Endpoint) -> None:
        self._stale = True

    def candidates(self, request: InferenceRequest, subset: Sequence[str] | None) -> list[Endpoint]:
        if self._stale:
            self._pool = self.datastore.ready_endpoints()
            self._stale = False
        return self._pool


class EngineSequence(Request):
    """The engine's request plus where its record is: carried on the sequence itself, so the
    per-token path needs no lookup."""

    __slots__ = ("record", "routed")

    def __init__(
        self, token_ids: list[int], max_output: int, now: float, record: RequestRecord, priority: int = 0
    ) -> None:
        super().__init__(str(record.index), token_ids, max_output, now, priority=priority)
        self.record = record
        self.routed: RoutedRequest | None = None


class _Server:
    """One simulated endpoint: its engine, and the step in progress whose tokens are due."""

    __slots__ = (
        "engine", "epoch", "exited", "leaving", "name", "number", "pending", "pod", "run", "stepping",
    )  # fmt: skip

    def __init__(self, engine: Engine, spec: EndpointSpec, number: int) -> None:
        self.engine = engine
        self.name = spec.name
        self.number = number  # the pod's number in the cluster (`endpoint_spec`)
        self.pod = spec.hostport  # host:port, as KV events name their engine
        self.pending: StepOutcome | None = None
        # the engine's decode cohort stepped by the event queue (the steps' counters not yet the engine's)
        self.run: DecodeRun | None = None
        self.stepping = False  # a step or a timer wake-up is scheduled
        self.epoch = 0  # bumps cancel a scheduled timer wake-up
        self.leaving = False  # out of the pool, draining its requests before it exits
        self.exited = False


class VirtualRun:
    """One run of `requests` through the EPP configured by `config`, built exactly as `epp serve`
    builds it, on a fresh cluster. Use `run()` once."""

    def __init__(
        self,
        requests: Sequence[BenchRequest],
        config: PickerConfig,
        cluster: VirtualCluster,
        objectives: Mapping[str, int] | None = None,
    ) -> None:
        """`objectives`: InferenceObjective name -> priority, as `--objectives-file` gives them."""
        self.requests = requests
        self.cluster = cluster
        self.now = 0.0
        self.datastore = Datastore()
        self.datastore.replace_all(endpoint_specs(cluster))
        context = PluginContext(EppMetrics(), random.Random(cluster.seed), clock=lambda: self.now)
        self.director, components = build_director(
            config, self.datastore, context, objectives, director_type=_FixedPoolDirector
        )
        self.plugins = list(components.plugins.values())
        self.sinks: list[KVEventSink] = [p for p in self.plugins if isinstance(p, KVEventSink)]
        for plugin in self.plugins:
            if isinstance(plugin, TokenProducer):  # no render server here: the engines' tokenizer
                plugin.sync_tokenizer = self.prompt_token_ids
        self.servers = {s.name: s for s in map(self._new_server, range(cluster.endpoints))}
        # every director's datastore (active-active replicas add theirs): pool changes reach all
        self.datastores = [self.datastore]
        self.members = list(range(cluster.endpoints))  # pod numbers in the pool or restarting
        self._next_pod = cluster.endpoints
        self.churn_log: list[tuple[float, str, str]] = []  # (time, what, pod): what the churn did
        self.records = [RequestRecord(r.index, r.group) for r in requests]
        # When the EPP routed each request (after flow control's queue, when it is on); NaN: never.
        self.routed_at = array("d", [math.nan]) * len(requests)
        self.itl: array[float] = array("d")
        self._tokens = PromptTokenizer()
        self._prompt_ids: dict[int, list[int]] = {}  # computed for the EPP, kept for the engine
        self._followers: dict[int, list[BenchRequest]] = {}
        self._events = new_event_queue()
        # Whether the event queue takes cohorts' plain steps (`DecodeRun`): not with flow control,
        # whose tasks run between events, nor with churn, whose pods exit with steps scheduled.
        self._runs = False
        self._open = 0  # requests not yet finished (or failed)
        # With flow control: set when a request leaving the EPP's queue schedules an event.
        self._scheduled: asyncio.Event | None = None
        self._admitting: set[asyncio.Task[None]] = set()

    @property
    def endpoints(self) -> list[Endpoint]:
        """The pool now (the primary datastore's endpoints)."""
        return list(self.datastore.endpoints())

    def run(self) -> RunResult:
        """Process events in (time, order of scheduling) order until every request is done.

        Initial arrivals, known up front and scheduled before anything else, are a sorted list
        merged with the event heap rather than pushed onto it: the heap then holds about one
        event per server instead of every future arrival, which makes each push and pop cheaper.
        An arrival wins a tie with a heap event, as its earlier scheduling would in the heap."""
        started = time.perf_counter()
        arrivals: list[BenchRequest] = []
        for request in self.requests:
            if request.follows is None:
                arrivals.append(request)
            else:
                self._followers.setdefault(request.follows, []).append(request)
        arrivals.sort(key=lambda r: r.arrival)  # stable: ties keep request order
        arrival_times = [r.arrival for r in arrivals]
        arrival_times.append(math.inf)
        self._open = len(self.requests)
        self._scrape(0.0, None)
        if self.cluster.churn is not None:
            for event in schedule(
                self.cluster.churn, arrival_times[-2] if arrivals else 0.0, len(self.members)
            ):
                self._push(event.at, self._churn, event)
        collecting = gc.isenabled()
        gc.disable()
        try:
            if self.director.flow_control is None:
                self._runs = self.cluster.churn is None
                self._loop(arrivals, arrival_times)
            else:
                self._run_queued(arrivals, arrival_times)
        finally:
            if collecting:
                # Everything the run allocated is young to the collector; enabled as it is, its next
                # allocation would scan all of it (2 s after 100,000 requests) to find nothing.
                # Freezing first hands it to the oldest generation unscanned, as a long-lived heap.
                gc.freeze()
                gc.unfreeze()
                gc.enable()
        self.itl = self._events.take_gaps()
        return RunResult(
            engine="virtual",
            records=self.records,
            endpoints=list(self.servers),
            itl=self.itl,
            wall_seconds=time.perf_counter() - started,
        )

    def _loop(self, arrivals: list[BenchRequest], arrival_times: list[float]) -> None:
        """The event loop, run with the cyclic garbage collector off. Its millions of allocations
        would set off collections whose passes over a large run's gigabytes of live objects cost
        more than a tenth of the run, and find nothing: reference counting frees what the loop
        drops (a collection after a run finds no cycle); any cycle a plugin makes waits for the
        collector's next full pass after the run (`run` hands the run's objects to the oldest
        generation)."""
        pop_before = self._events.pop_before
        arrive = self._arrive
        next_arrival = 0
        while self._open:
            at = arrival_times[next_arrival]
            event = pop_before(at)
            if event is not None:
                now, handler, payload = event
                self.now = now
                handler(now, payload)
            elif next_arrival < len(arrivals):
                self.now = at
                arrive(at, arrivals[next_arrival])
                next_arrival += 1
            else:
                break

    def _run_queued(self, arrivals: list[BenchRequest], arrival_times: list[float]) -> None:
        """With flow control, requests wait in the EPP's queue (the awaited `prepare_body`, as in
        `epp serve`), so the run is driven from an asyncio loop on the model clock: the same
        events in the same order, while the flow controller's tasks and timers run between them."""
        loop = VirtualTimeLoop(self)
        try:
            loop.run_until_complete(self._loop_queued(arrivals, arrival_times))
        finally:
            assert self.director.flow_control is not None
            loop.run_until_complete(self.director.flow_control.stop())
            loop.close()

    async def _loop_queued(self, arrivals: list[BenchRequest], arrival_times: list[float]) -> None:
        """`_loop`, awaiting the model time of each next event. Meanwhile the loop runs the flow
        controller; a request it dispatches schedules its engine step at that moment, which
        `_scheduled` reports, so the step is taken then and not at the awaited time."""
        events = self._events
        scheduled = self._scheduled = asyncio.Event()
        next_arrival = 0
        while self._open:
            at = arrival_times[next_arrival]
            first = events.next_time()
            from_heap = first < at
            when = first if from_heap else at
            if when == math.inf:
                break
            if when > self.now:
                scheduled.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(when):
                        await scheduled.wait()
                if scheduled.is_set():
                    continue  # something earlier than `when` was scheduled meanwhile
            self.now = when
            if from_heap:
                _, handler, payload = events.pop()
                handler(when, payload)
            else:
                self._arrive(when, arrivals[next_arrival])
                next_arrival += 1

    def prompt_token_ids(self, request: InferenceRequest) -> list[int] | None:
        """The token-producer's tokenizer here: the ids the engine will be given (the same as
        `engine_token_ids` computes from the body, tested), memoised by piece and computed once
        per request for both the EPP and the engine. A request id naming no benchmark request
        falls back to parsing the body."""
        try:
            index = int(request.request_id)
            bench_request = self.requests[index]
        except (ValueError, IndexError):
            return engine_token_ids(request)
        if bench_request.index != index:
            return engine_token_ids(request)
        ids = self._prompt_ids.get(index)
        if ids is None:
            ids = self._prompt_ids[index] = self._tokens.token_ids(bench_request)
        return list(ids)  # the EPP's copy: nothing it does can touch the engine's prompt

    def _push(self, at: float, handler: Callable[[float, Any], None], payload: Any) -> None:
        self._events.push(at, handler, payload)
        if self._scheduled is not None:
            self._scheduled.set()

    def _scrape(self, now: float, _: None) -> None:
        for endpoint in self.datastore.endpoints():
            server = self.servers[endpoint.name]
            run = server.run
            endpoint.metrics = scraped_metrics(server.engine, now, 0 if run is None else run.blocks_taken)
        self._push(now + self.cluster.scrape_interval, self._scrape, None)

    # ----- clients -> EPP -> server ----------------------------------------------------------

    def _arrive(self, now: float, request: BenchRequest) -> None:
        record = self.records[request.index]
        record.sent = now
        headers = {
            ":method": "POST",
            ":path": request.path,
            "x-request-id": str(request.index),
            **request.gateway_headers(),
        }
        raw = orjson.dumps(request.body(self.cluster.model))
        if self._scheduled is not None:
            task = asyncio.get_running_loop().create_task(self._arrive_queued(raw, headers, request, record))
            self._admitting.add(task)
            task.add_done_callback(self._admitting.discard)
            return
        try:
            routed = self.director.handle_body(raw, headers, None)
        except RequestError as error:
            self._failed(record, now, error.code.label)
            return
        self._routed(routed, request, record, now)

    async def _arrive_queued(
        self, raw: bytes, headers: dict[str, str], request: BenchRequest, record: RequestRecord
    ) -> None:
        """As ext_proc's stream does with flow control on: await the queue, then route."""
        try:
            prepared = await self.director.prepare_body(raw, headers)
            routed = self.director.handle_body(raw, headers, None, prepared=prepared)
        except RequestError as error:
            self._failed(record, self.now, error.code.label)
            return
        self._routed(routed, request, record, self.now)

    def _routed(
        self, routed: RoutedRequest, request: BenchRequest, record: RequestRecord, now: float
    ) -> None:
        record.endpoint = routed.result.targets[0].name
        self.routed_at[record.index] = now
        token_ids = self._prompt_ids.pop(request.index, None)
        if token_ids is None:
            token_ids = self._tokens.token_ids(request)
        record.prompt_tokens = len(token_ids)
        self.dispatch(routed, request, token_ids, record, now)

    def dispatch(
        self,
        routed: RoutedRequest,
        request: BenchRequest,
        token_ids: list[int],
        record: RequestRecord,
        now: float,
    ) -> None:
        """Hand the routed request to its server (a P/D run overrides this to add a prefill leg)."""
        sequence = EngineSequence(token_ids, request.max_tokens, now, record, forwarded_priority(routed))
        target = routed.result.targets[0]
        engine = self.servers[target.name].engine
        sequence.block_hashes = self._tokens.block_hashes(
            request, token_ids, engine.block_size, engine.namespace
        )
        self.admit_to_engine(sequence, target, routed, now, starts_response=True)

    def admit_to_engine(
        self,
        sequence: EngineSequence,
        endpoint: Endpoint,
        routed: RoutedRequest,
        now: float,
        starts_response: bool,
    ) -> None:
        """Queue `sequence` on `endpoint`'s engine; a rejection ends the request with its status.
        `starts_response`: the engine's admission is when the client's response begins."""
        server = self.servers[endpoint.name]
        if sequence.priority and server.engine.scheduling_policy != "priority":
            # vLLM: "Got priority N but Priority scheduling is not enabled."
            routed.response_started(400, False)
            routed.finish()
            self._failed(sequence.record, now, "priority_not_enabled")
            return
        if server.run is not None:  # the engine's input ends the queue's steps of its cohort
            server.run.halt()
            self._took_steps(server)
        rejection = server.engine.add(sequence)
        if rejection is not None:
            routed.response_started(_REJECTION_STATUS[rejection], False)
            routed.finish()
            self._failed(sequence.record, now, rejection.value)
            return
        if starts_response:
            routed.response_started(200, True)  # the simulator sends headers on admission
        sequence.routed = routed
        if not server.stepping:
            self._wake(server, now)

    def _failed(self, record: RequestRecord, now: float, reason: str) -> None:
        record.error = reason
        self._done(record.index, now)

    def _done(self, index: int, now: float) -> None:
        self._open -= 1
        for follower in self._followers.pop(index, ()):
            self._push(now + follower.arrival, self._arrive, follower)

    # ----- servers ---------------------------------------------------------------------------

    def _wake(self, server: _Server, now: float) -> None:
        server.epoch += 1
        server.stepping = True
        self._push(now, self._step, (server, server.epoch))

    def _step(self, now: float, payload: tuple[_Server, int]) -> None:
        server, epoch = payload
        if epoch != server.epoch:
            return  # a timer wake-up overtaken by an arrival
        if server.run is not None:  # the event queue took the cohort's steps up to here
            self._took_steps(server)
        pending = server.pending
        if pending is not None:
            self.deliver(pending, now)
            server.pending = None
        engine = server.engine
        outcome = engine.step(now)
        if self.sinks:
            events = engine.drain_kv_events()  # published as the step starts, as epp sim does
            if events and not server.leaving:  # the EPP's reader drops events of a pod outside the pool
                for sink in self.sinks:
                    sink.apply_kv_events(server.pod, events, self.cluster.model)
        if outcome.batch_size:
            server.stepping = True  # also when a timer, not an arrival, woke the idle engine
            ahead = engine.decode_ahead() if self._runs else None
            if ahead is not None:  # this step's gaps, and the cohort's next plain steps, in the queue
                left, context, base, kv, blocks = ahead
                stats = engine.stats
                server.run = new_decode_run(
                    left, outcome.batch_size, context, base, kv, outcome.gaps[0], outcome.end,
                    stats.busy_seconds, stats.itl.total, stats.itl.bounds, blocks,
                )  # fmt: skip
                self._events.push_run(outcome.end, self._step, payload, server.run)
                return
            server.pending = outcome
            self._events.push(outcome.end, self._step, payload)  # _push, inlined: once per engine step
            return
        # idle: the next arrival wakes it (bumping the epoch voids this timer), else the timer does
        server.stepping = False
        if server.leaving and not engine.has_work():
            self._exit(server, now)
            return
        timer = engine.next_timer()
        if timer is not None:
            self._push(max(timer, now), self._step, payload)

    def _took_steps(self, server: _Server) -> None:
        """The engine takes over its cohort's counters from the steps the event queue took."""
        run = server.run
        assert run is not None
        server.run = None
        server.engine.took_decode_steps(
            run.taken, run.context, run.last_end, run.busy, run.itl_total, run.adds
        )

    def deliver(self, outcome: StepOutcome, now: float) -> None:
        """The step ended (``now`` is its end): hand out its tokens and finish its completed
        requests. The inter-token gaps are the engine's, so a decode step touches no sequence.
        (A cohort's plain steps, which produce gaps only, the event queue delivers itself.)"""
        self._events.add_gaps(outcome.gaps)
        first: list[EngineSequence] = outcome.first_tokens  # type: ignore[assignment]
        for sequence in first:
            sequence.record.first_token = now
            self.first_chunk(sequence)
        finished: list[EngineSequence] = outcome.finished  # type: ignore[assignment]
        for sequence in finished:
            record = sequence.record
            record.done = now
            record.output_tokens = sequence.output_done
            record.cached_tokens = sequence.cached_tokens or 0
            reported = usage(sequence.prompt_len, sequence.output_done, record.cached_tokens)
            assert sequence.routed is not None
            sequence.routed.response_body(b"data: " + orjson.dumps({"usage": reported}) + b"\n\n", True)
            self._done(record.index, now)

    @staticmethod
    def first_chunk(sequence: EngineSequence) -> None:
        """The response's first body chunk, at its first token (vLLM sends its opening frame with
        the first output), to the EPP when a ResponseStreaming plugin asks for chunks. Later
        tokens' chunks are not handed over one by one: the usage at the end carries their count."""
        routed = sequence.routed
        if routed is not None and routed.response_status == 200 and routed.reads_response_chunks:
            routed.response_body(_FIRST_CHUNK, False)

    # ----- pods leaving, restarting and joining ---------------------------------------------------

    def _new_server(self, pod: int) -> _Server:
        engine = Engine(
            self.cluster.profile,
            self.cluster.model,
            record_kv_events=bool(self.sinks),
            scheduling_policy=self.cluster.scheduling_policy,
            lazy_counters=True,  # only first tokens and finished requests are read
        )
        return _Server(engine, endpoint_spec(self.cluster, pod), pod)

    def _churn(self, now: float, event: ChurnEvent) -> None:
        if event.kind == "scale":
            self.scale(now, event.endpoints)
        elif event.pod < len(self.members):
            self.restart(now, self.members[event.pod])

    def restart(self, now: float, pod: int) -> None:
        """Pod number `pod` leaves the pool, drains, exits and returns empty `startup` later; a
        pod already restarting is left alone."""
        server = self.servers[endpoint_spec(self.cluster, pod).name]
        if server.leaving:
            self.churn_log.append((now, "restart skipped: already down", server.name))
            return
        self._leave(server, now)

    def scale(self, now: float, endpoints: int) -> None:
        """New pods join with fresh engines; the highest-numbered leave (and do not return)."""
        while len(self.members) < endpoints:
            pod = self._next_pod
            self._next_pod += 1
            self.members.append(pod)
            self._join(now, pod)
        while len(self.members) > endpoints:
            server = self.servers[endpoint_spec(self.cluster, self.members.pop()).name]
            if not server.leaving:
                self._leave(server, now)

    def _join(self, now: float, pod: int) -> None:
        server = self._new_server(pod)
        self.servers[server.name] = server
        for datastore in self.datastores:
            datastore.upsert(endpoint_spec(self.cluster, pod))
        self.churn_log.append((now, "joined", server.name))

    def _leave(self, server: _Server, now: float) -> None:
        """Out of the pool at once (the EPP routes nothing more there); in-flight requests get
        the churn's `shutdown_timeout` to finish."""
        server.leaving = True
        for datastore in self.datastores:
            datastore.remove(server.name)
        self.churn_log.append((now, "left", server.name))
        if not server.engine.has_work():
            self._exit(server, now)
            return
        assert self.cluster.churn is not None
        self._push(now + self.cluster.churn.shutdown_timeout, self._shutdown, server)

    def _shutdown(self, now: float, server: _Server) -> None:
        """The drain bound: what is still in the engine is aborted (its client sees the stream
        cut, an error), as vLLM aborts in-flight requests at its --shutdown-timeout."""
        if server.exited:
            return
        cut = server.engine.abort_all()
        if server.pending is not None:  # finished in the step the deadline cuts: never delivered
            cut += server.pending.finished
        for sequence in cut:
            assert isinstance(sequence, EngineSequence)
            if sequence.routed is not None:
                sequence.routed.finish()
            self._failed(sequence.record, now, "shutdown")
        self._exit(server, now)

    def _exit(self, server: _Server, now: float) -> None:
        server.exited = True
        server.epoch += 1  # voids a scheduled step or timer
        server.pending = None
        self.churn_log.append((now, "exited", server.name))
        if server.number in self.members:  # restarting, not scaled in
            assert self.cluster.churn is not None
            self._push(now + self.cluster.churn.startup, self._return, server.number)

    def _return(self, now: float, pod: int) -> None:
        if pod in self.members:  # not scaled in while it was down
            self._join(now, pod)


def run_virtual(requests: Sequence[BenchRequest], config: PickerConfig, cluster: VirtualCluster) -> RunResult:
    return VirtualRun(requests, config, cluster).run()
