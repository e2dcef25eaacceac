"""GIE's flow-control layer (feature gate `flowControl`): requests wait in per-flow queues inside
the EPP and are released to the scheduler only while the pool has room.

A flow is (fairness id, priority). One dispatch loop (an asyncio task, GIE's shard processor)
runs a cycle whenever a request arrives and every TICK while requests wait: it reads the pool's
saturation from the saturation detector (per stage, prefill and decode, the larger gating, as
llm-d's: `stage_saturation`), asks the usage-limit policy for each band's ceiling, and
walks the bands from the highest priority down; the first band whose ceiling the saturation
reaches stops the cycle (head-of-line blocking, so a lower band never takes capacity a higher
one waits for); otherwise the band's fairness policy picks a flow and that flow's head (by the
band's ordering policy) is dispatched. One request per cycle, and the loop yields before the next,
so the dispatched request is routed (and its load counted) before saturation is read again; one
whose async data producers still run (routing waits for them) is counted meanwhile as in flight
(`preparing`, `SaturationDetector.saturation_with`), so a slow producer lets no more through. A
request arriving when nothing else waits and the loop is idle (what it released last has routed)
runs that cycle itself, in its own call: dispatched at once when the pool has room, with the same
policies and metrics and without a round trip through the loop (the common case, not saturated,
then costs no event-loop hop); otherwise it waits.

Outcomes, as GIE's EnqueueAndWait: dispatched; rejected at capacity (global or band maxBytes /
maxRequests) → 429; TTL expired (`defaultRequestTTL`, else the caller's deadline) → 503; the
caller gone (client disconnected) → the wait is cancelled, the request leaves its queue; the
controller stopping → every queued request evicted (500); a plugin of the dispatch cycle raising
→ the request dispatching inline gets that error, or, in the loop, every queued request a 500."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from epp.datastore import Endpoint
from epp.flowcontrol.eviction import EvictionItem, RequestEvictor
from epp.flowcontrol.queues import (
    Band,
    BandLimits,
    FairnessPolicy,
    OrderingPolicy,
    Outcome,
    QueuedRequest,
    UsageLimitPolicy,
)
from epp.flowcontrol.reclamation import ReclamationController
from epp.flowcontrol.saturation import SaturationDetector, split_stages
from epp.metrics.capacity import Occupancy
from epp.metrics.exporter import STAGE_DECODE, STAGE_EFFECTIVE, STAGE_PREFILL, FlowControlMetrics
from epp.requests import DEFAULT_FAIRNESS_ID, ErrorCode, InferenceRequest, RequestError
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_BAND_MAX_BYTES = 1_000_000_000  # GIE: a band's maxBytes when 0 or omitted
TICK = 0.002  # seconds between dispatch cycles while requests wait and the pool is saturated
MAX_FAIRNESS_ID_LENGTH = 128

# GIE's error texts (Go's wrapped errors: `<ErrRejected|ErrEvicted>: <cause>`).
REJECTED = "request rejected pre-queue"
EVICTED = "request evicted from queue"
AT_CAPACITY = f"{REJECTED}: queue at capacity"
TTL_EXPIRED = f"request timed out in queue: {EVICTED}: request TTL expired"
CLIENT_GONE = f"client disconnected: {EVICTED}: request context cancelled: context canceled"
NOT_RUNNING = "flow controller is not running"
CYCLE_FAILED = "the dispatch cycle failed"
# Why a queued request left its queue other than dispatched, by outcome (its waiter's 500).
LEFT_QUEUE = {
    Outcome.EVICTED_OTHER: f"internal flow control error: {EVICTED}: {NOT_RUNNING}",
    Outcome.REJECTED_OTHER: f"internal flow control error: {EVICTED}: {CYCLE_FAILED}",
}


def bound_fairness_id(raw: str | None) -> str:
    """The fairness id of a request: the header's value, `default-flow` when absent or empty.
    Clients choose it, so one longer than MAX_FAIRNESS_ID_LENGTH is cut to its first 64
    characters, `~` and 32 hex digits of a hash of the whole: 97 characters (distinct ids stay
    distinct; a 1 MB header costs 97 characters of key and label)."""
    if not raw:
        return DEFAULT_FAIRNESS_ID
    if len(raw) <= MAX_FAIRNESS_ID_LENGTH:
        return raw
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{raw[:64]}~{digest}"


@dataclass(frozen=True)
class BandConfig:
    limits: BandLimits
    fairness: FairnessPolicy
    ordering: OrderingPolicy


@dataclass(frozen=True)
class FlowControlConfig:
    """The `flowControl` section, resolved: limits in bytes/requests (0 = unlimited), TTL in
    seconds (0 = the caller's deadline, else none), policies as plugin instances."""

    default_band: BandConfig
    bands: Mapping[int, BandConfig] = field(default_factory=dict)
    max_bytes: int = 0
    max_requests: int = 0
    default_request_ttl: float = 0.0


class FlowController:
    def __init__(
        self,
        config: FlowControlConfig,
        detector: SaturationDetector,
        usage_limit: UsageLimitPolicy,
        pool: Callable[[], Sequence[Endpoint]],
        metrics: FlowControlMetrics,
        pool_name: str = "standalone",
        clock: Callable[[], float] = time.monotonic,
        staged: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.detector = detector
        self.usage_limit = usage_limit
        self._pool = pool
        # Whether the pool may hold endpoints of other stages than decode (None: assume so);
        # when not, the whole pool is the decode stage and is read without splitting it.
        self._staged = staged
        self.metrics = metrics
        self.pool_name = pool_name
        self._clock = clock
        self.bands: dict[int, Band] = {}
        for priority, band in config.bands.items():
            self._band(priority, band)
        self._ordered: list[int] = sorted(self.bands, reverse=True)
        self.length = 0
        self.bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The loop parked with nothing queued (or not started): the last request it released has
        # resumed, and routed, so a request arriving now may run the dispatch cycle itself.
        self._idle = True
        self._stopped = False
        self.reclamation: ReclamationController | None = None  # in-flight eviction on
        # Dispatched requests not routed yet (their async data producers run): counted as in
        # flight by the saturation read, so a slow producer cannot let more through than room.
        self.preparing_requests = 0
        self.preparing_tokens = 0
        metrics.watch_saturation(pool_name, self.stage_saturation)
        metrics.watch_capacity(pool_name, self.occupancy)

    def enable_eviction(self, evictor: RequestEvictor, detector_type: str) -> None:
        """Turn on in-flight eviction (llm-d router's enableEviction): routed requests are tracked
        (`track`) and the dispatch loop evicts sheddable ones for higher-priority waiting work."""
        self.reclamation = ReclamationController(
            evictor,
            lambda priority: self.bands[priority].length > 0,
            detector_type,
            self.metrics,
            self.pool_name,
            self._clock,
        )

    def track(self, request: InferenceRequest, target: str) -> EvictionItem | None:
        """A request routed to `target` (host:port): tracked while in flight when eviction is on.
        The caller `untrack`s it when its stream ends, however it ends."""
        return None if self.reclamation is None else self.reclamation.evictor.track(request, target)

    def untrack(self, item: EvictionItem) -> None:
        if self.reclamation is not None:
            self.reclamation.evictor.release(item)

    @property
    def busy(self) -> bool:
        """Whether a request arriving now would probably wait: requests are queued, or the pool
        is saturated for some band."""
        if self.length > 0:
            return True
        saturation = self._saturation()
        return saturation >= self.usage_limit.lowest_ceiling(saturation, self._ordered or [0])

    def stage_saturation(self) -> dict[str, float]:
        """The saturation of each stage the pool has endpoints for (`prefill`, `decode`:
        `split_stages`) and `effective`, the larger, which gates dispatch (llm-d's flow
        controller): a P/D pool waits while either stage is full. A pool with neither (empty, or
        only encoders) reads as a whole; so does one whose stages all read NaN, as in llm-d."""
        pool = self._pool()
        if pool and self._staged is not None and not self._staged():
            value = self._read(pool)  # no roles: one decode stage, the whole pool (the usual GIE pool)
            return {STAGE_DECODE: value, STAGE_EFFECTIVE: value}
        prefill, decode = split_stages(pool)
        present = [
            (stage, part) for stage, part in ((STAGE_PREFILL, prefill), (STAGE_DECODE, decode)) if part
        ]
        values = (
            self.detector.stage_saturations(
                [part for _, part in present], self.preparing_requests, self.preparing_tokens
            )
            if present
            else []
        )
        stages: dict[str, float] = {}
        effective = -1.0
        for (stage, _), value in zip(present, values, strict=True):
            stages[stage] = value
            if value > effective:
                effective = value
        stages[STAGE_EFFECTIVE] = effective if effective >= 0.0 else self._read(pool)
        return stages

    def occupancy(self) -> tuple[Occupancy, dict[int, Occupancy]]:
        """What the queues hold against the global limits and each band's (the capacity gauges)."""
        config = self.config
        total = Occupancy(self.length, config.max_requests, self.bytes, config.max_bytes)
        bands = {
            priority: Occupancy(band.length, band.limits.max_requests, band.bytes, band.limits.max_bytes)
            for priority, band in self.bands.items()
        }
        return total, bands

    def _saturation(self) -> float:
        return self.stage_saturation()[STAGE_EFFECTIVE]

    def _read(self, endpoints: Sequence[Endpoint]) -> float:
        if self.preparing_requests:
            return self.detector.saturation_with(endpoints, self.preparing_requests, self.preparing_tokens)
        return self.detector.saturation(endpoints)

    # --- the caller's side -----------------------------------------------------------------------

    @contextlib.contextmanager
    def preparing(self, request: InferenceRequest) -> Iterator[None]:
        """A dispatched request between its dispatch and its routing (its async data producers
        run): entered at once when its wait returns, before the dispatch loop's next cycle, and
        left on the step it routes (and takes its load), fails or is cancelled."""
        tokens = request.prompt_tokens
        self.preparing_requests += 1
        self.preparing_tokens += tokens
        try:
            yield
        finally:
            self.preparing_requests -= 1
            self.preparing_tokens -= tokens

    async def enqueue_and_wait(self, request: InferenceRequest, deadline: float | None = None) -> None:
        """Wait until the request is dispatched; raise RequestError for every other outcome.
        `deadline` is the caller's time remaining in seconds (None: no deadline)."""
        started = time.perf_counter()
        fairness_id = request.fairness_id or DEFAULT_FAIRNESS_ID
        priority = request.priority
        labels = self.metrics.flow_labels(fairness_id, priority)
        if self._stopped:
            self.metrics.enqueued(labels, Outcome.REJECTED_OTHER, time.perf_counter() - started)
            self.metrics.counted(labels, Outcome.REJECTED_OTHER, self.pool_name)
            raise RequestError(ErrorCode.INTERNAL, f"internal flow control error: {REJECTED}: {NOT_RUNNING}")
        loop = asyncio.get_running_loop()
        ttl = self.config.default_request_ttl
        if deadline is not None and deadline > 0:
            # GIE waits under a context with both deadlines: whichever comes first.
            ttl = min(ttl, deadline) if ttl > 0 else deadline
        item = QueuedRequest(
            request=request,
            fairness_id=fairness_id,
            priority=priority,
            byte_size=request.body_size,
            enqueued=self._clock(),
            ttl=ttl,
            future=loop.create_future(),
        )
        band = self._band(priority)
        if not self._has_capacity(band, item.byte_size):
            self.metrics.enqueued(labels, Outcome.REJECTED_CAPACITY, time.perf_counter() - started)
            self.metrics.finalized(item, labels, Outcome.REJECTED_CAPACITY, self.pool_name, 0.0)
            raise RequestError(ErrorCode.RESOURCE_EXHAUSTED, AT_CAPACITY)
        band.add(item)
        self.length += 1
        self.bytes += item.byte_size
        self.metrics.queued(item, labels, self.pool_name, +1)
        self.metrics.enqueued(labels, Outcome.NOT_YET_FINALIZED, time.perf_counter() - started)
        if self.length == 1 and self._idle and self._dispatch_inline(item, labels):
            return  # it alone waited and the pool had room: the cycle the loop would run, run here
        self._ensure_running(loop)
        self._wake.set()
        try:
            if ttl > 0:
                async with asyncio.timeout(ttl):
                    await item.future
            else:
                await item.future
        except TimeoutError:
            if item.outcome is Outcome.NOT_YET_FINALIZED:
                self._finalize(item, labels, Outcome.EVICTED_TTL)
                raise RequestError(ErrorCode.SERVICE_UNAVAILABLE, TTL_EXPIRED) from None
            # Dispatched, or evicted by stop(), in the same instant the TTL ran out: that outcome
            # stands (it has released the request already).
        except asyncio.CancelledError:
            if item.outcome is Outcome.NOT_YET_FINALIZED:
                self._finalize(item, labels, Outcome.EVICTED_CONTEXT_CANCELLED)
            raise
        if item.outcome is not Outcome.DISPATCHED:
            raise RequestError(ErrorCode.INTERNAL, LEFT_QUEUE[item.outcome])

    def _dispatch_inline(self, item: QueuedRequest, labels: tuple[str, str]) -> bool:
        """The dispatch cycle run in the request's own call. A plugin of the cycle that raises
        (a detector, a policy) takes the request out of the queue before the error goes on, so
        nothing is left queued that no loop is running to dispatch."""
        try:
            return self.dispatch_cycle()
        except Exception:
            if item.outcome is Outcome.NOT_YET_FINALIZED:
                self._finalize(item, labels, Outcome.REJECTED_OTHER)
            raise

    def _has_capacity(self, band: Band, size: int) -> bool:
        config = self.config
        if config.max_bytes and self.bytes + size > config.max_bytes:
            return False
        if config.max_requests and self.length + 1 > config.max_requests:
            return False
        limits = band.limits
        if limits.max_bytes and band.bytes + size > limits.max_bytes:
            return False
        return not (limits.max_requests and band.length + 1 > limits.max_requests)

    def _band(self, priority: int, config: BandConfig | None = None) -> Band:
        """The band of a priority; bands not configured are made from `defaultPriorityBand`."""
        band = self.bands.get(priority)
        if band is None:
            config = config or self.config.default_band
            band = self.bands[priority] = Band(priority, config.limits, config.fairness, config.ordering)
            self._ordered = sorted(self.bands, reverse=True)
        return band

    def _finalize(self, item: QueuedRequest, labels: tuple[str, str], outcome: Outcome) -> None:
        item.outcome = outcome
        if item.flow is not None:
            item.flow.remove(item)
        self._left(item, labels, outcome)

    def _left(self, item: QueuedRequest, labels: tuple[str, str], outcome: Outcome) -> None:
        self.length -= 1
        self.bytes -= item.byte_size
        self.metrics.queued(item, labels, self.pool_name, -1)
        self.metrics.finalized(item, labels, outcome, self.pool_name, self._clock() - item.enqueued)

    # --- the dispatch loop -----------------------------------------------------------------------

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="flow-control-dispatch")
            self._idle = False

    async def _run(self) -> None:
        while not self._stopped:
            if self.length == 0:
                self._wake.clear()
                self._idle = True
                await self._wake.wait()
                self._idle = False
                continue
            try:
                dispatched = self.dispatch_cycle()
            except Exception:
                # A plugin of the cycle (a detector, a policy) failed. Nothing queued could be
                # dispatched past it: the requests get their 500 now, rather than wait for a TTL
                # (or for ever without one), and the loop goes on for those that come next.
                log.exception(
                    "flow control's dispatch cycle failed; failing the %d queued requests", self.length
                )
                self._evict_all(Outcome.REJECTED_OTHER)
                continue
            if dispatched:
                await asyncio.sleep(0)  # the dispatched request routes (takes its load) first
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK):
                    await self._wake.wait()

    def dispatch_cycle(self) -> bool:
        """One cycle; True when a request was dispatched."""
        started = time.perf_counter()
        try:
            saturation = self._saturation()
            priorities = self._ordered
            ceilings = self.usage_limit.ceilings(saturation, priorities)
            for index, (priority, ceiling) in enumerate(zip(priorities, ceilings, strict=True)):
                if saturation >= ceiling:
                    if self.reclamation is not None:
                        self.reclamation.consider(saturation, priorities, ceilings, index)
                    return False  # head-of-line blocking: nothing below may pass
                band = self.bands[priority]
                if band.length == 0:
                    continue
                flow = band.fairness.pick(band)
                if flow is None:
                    continue
                item = flow.pop()
                item.outcome = Outcome.DISPATCHED
                self._left(
                    item, self.metrics.flow_labels(item.fairness_id, item.priority), Outcome.DISPATCHED
                )
                # Its waiter may have been cancelled this instant (the client gone): the future
                # is then already done and the waiter's handler sees the outcome.
                if not item.future.done():
                    item.future.set_result(Outcome.DISPATCHED)
                # The policy (a plugin) is told last: one that raises finds the request out of
                # its flow and already dispatched, not lost between the two.
                band.fairness.dispatched(band, item)
                return True
            return False
        finally:
            self.metrics.dispatch_cycle.observe(time.perf_counter() - started)

    def _evict_all(self, outcome: Outcome) -> None:
        """Take every queued request out with `outcome`; each waiter raises its LEFT_QUEUE error."""
        for band in self.bands.values():
            for flow in list(band.flows.values()):
                while flow.head() is not None:
                    item = flow.pop()
                    item.outcome = outcome
                    self._left(item, self.metrics.flow_labels(item.fairness_id, item.priority), outcome)
                    # A waiter cancelled this instant (its client gone) has a done future and has
                    # not run its handler yet: the outcome set above keeps it from releasing again.
                    if not item.future.done():
                        item.future.set_result(outcome)

    async def stop(self) -> None:
        """Evict every queued request (GIE: EvictedOther, `flow controller is not running`)."""
        self._stopped = True
        self._evict_all(Outcome.EVICTED_OTHER)
        await cancel_and_wait(self._task)
