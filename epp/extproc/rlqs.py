"""Envoy's rate-limit quota service (RLQS, `StreamRateLimitQuotas`) on the EPP's gRPC server: the
gateway's `rate_limit_quota` filter, before ext_proc, reports how many requests each of its
buckets allowed and denied, and enforces the token bucket the EPP assigns (epp.flowcontrol.
envoy_quota decides the rate from the EPP's own overload guard). Refused in Envoy, the excess
never opens an ext_proc stream, so its 429 does not wait in the EPP's queue.

What Envoy 1.40 does (read in its filter and client, checked by experiment): one stream per RLQS
cluster and domain and Envoy process, whatever its worker count (the workers share each bucket's
tokens); a report when a bucket is first hit, then every 5 s whatever `reporting_interval` says
(hard-coded there); a request no assignment covers is allowed (no_assignment_behavior's default);
an assignment lasts its `assignment_time_to_live`, read in whole seconds, then the bucket allows
all again; a token bucket's rate is `tokens_per_fill` over `fill_interval`, also whole seconds.
So the EPP pushes: a new limit to every stream at once, the same one again every REFRESH while it
lasts (an EPP gone leaves at most ASSIGNMENT_TTL_SECONDS of limit behind, and an Envoy restarted
gets it with the answer to its first report), and an ALLOW_ALL assignment when it is lifted, so
the bucket allows everything at once (Envoy keeps it, with that action, until its TTL ends, and
then allows all anyway). A gateway has a bucket per InferenceObjective its bootstrap lists (the id
names it, QUOTA_OBJECTIVE_KEY) and a default one; every bucket of every gateway gets its part of
the rate by its objective's priority (epp.flowcontrol.quota_priority: the highest first, sheddable
last), buckets of one priority in proportion to the demand each reported (allowed and denied
requests per second, or what the EPP itself received of the objective, `seen`, where more), but
for a tenth of it split equally (a bucket idle at its last report, up to 5 s ago, is not
starved). The limit is lifted only once the EPP receives clearly less than the parts of the
buckets it may still hold back: those whose last report had denials or did not cover only time
under the limit (`binding`); an idle bucket's unused part does not make it look like the demand
fell."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc
from google.protobuf import duration_pb2, wrappers_pb2

from epp.extproc.pb import ratelimit_strategy, rlqs, rlqs_grpc, token_bucket
from epp.flowcontrol.envoy_quota import MAX_RATE, MIN_RATE, EnvoyQuota
from epp.flowcontrol.quota_priority import DEFAULT_PRIORITY, Demand, ObjectiveCounts, allot
from epp.headers import QUOTA_OBJECTIVE_KEY
from epp.metrics.exporter import EppMetrics
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between two decisions of the quota
ASSIGNMENT_TTL_SECONDS = 2  # whole seconds (Envoy ignores the fraction)
REFRESH = 1.0  # seconds: a limit is sent again this often, before its TTL runs out
BURST_SECONDS = 0.1  # the bucket holds this long of the rate
CHANGE = 0.02  # a relative change of a stream's share that is pushed before its next report
MAX_BUCKETS = 1024  # per stream: a gateway config with dynamic bucket ids cannot grow this forever

_Response: TypeAlias = rlqs.RateLimitQuotaResponse
_ALLOW_ALL = ratelimit_strategy.RateLimitStrategy(blanket_rule=ratelimit_strategy.RateLimitStrategy.ALLOW_ALL)
_TTL = duration_pb2.Duration(seconds=ASSIGNMENT_TTL_SECONDS)


def strategy(rate: float | None) -> ratelimit_strategy.RateLimitStrategy:
    """Envoy's strategy for `rate` requests per second (None: allow all)."""
    if rate is None:
        return _ALLOW_ALL
    rate = rate if rate < MAX_RATE else MAX_RATE  # the fields are uint32 (NaN: the most)
    bucket = token_bucket.TokenBucket(
        max_tokens=max(1, math.ceil(rate * BURST_SECONDS)),
        tokens_per_fill=wrappers_pb2.UInt32Value(value=max(1, round(rate))),
        fill_interval=duration_pb2.Duration(seconds=1),
    )
    return ratelimit_strategy.RateLimitStrategy(token_bucket=bucket)


@dataclass(eq=False)
class _Bucket:
    """One of a gateway's buckets: its id, the objective it is for, its last report."""

    id: rlqs.BucketId
    objective: str | None  # None: the default bucket (or any bucket naming no objective)
    denied: bool = False  # its last report had denials
    demand: float = 0.0  # requests per second in its last report
    reported: float | None = None  # when it was last in a report
    covered_from: float | None = None  # the start of the time its last report covered


@dataclass(eq=False)
class _Stream:
    """One gateway's stream: its buckets, its demand, what it was last assigned."""

    peer: str
    # the next reply, or None to end the stream: only the latest assignment matters
    outbox: asyncio.Queue[_Response | None] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    ended: bool = False
    buckets: dict[bytes, _Bucket] = field(default_factory=dict)
    assigned: dict[bytes, float] | None = None  # each bucket's rate last sent (None: none, or allow-all)
    sent: float = 0.0  # when (monotonic)

    @property
    def demand(self) -> float:
        """Requests per second in its last report, over all its buckets."""
        return sum(bucket.demand for bucket in self.buckets.values())

    @property
    def last_report(self) -> float | None:
        """When its buckets were last reported (None: never)."""
        return max((b.reported for b in self.buckets.values() if b.reported is not None), default=None)

    @property
    def limited(self) -> bool:
        """It holds token buckets of ours."""
        return self.assigned is not None

    def send(self, reply: _Response | None) -> None:
        """Queue `reply` in place of one not yet written (it supersedes it); None ends the stream."""
        if self.ended:
            return
        if self.outbox.full():
            self.outbox.get_nowait()
        self.ended = reply is None
        self.outbox.put_nowait(reply)

    def changed(self, rates: dict[bytes, float]) -> bool:
        """Whether `rates` differ from those last sent by more than CHANGE, in any bucket."""
        assigned = self.assigned
        if assigned is None or assigned.keys() != rates.keys():
            return True
        return any(abs(rate - assigned[key]) > CHANGE * assigned[key] for key, rate in rates.items())

    def assignment(self, rates: dict[bytes, float] | None, now: float) -> _Response:
        """Each bucket's token bucket at its rate of `rates` (None: allow all)."""
        self.assigned, self.sent = rates, now
        return _Response(
            bucket_action=[
                _Response.BucketAction(
                    bucket_id=bucket.id,
                    quota_assignment_action=_Response.BucketAction.QuotaAssignmentAction(
                        assignment_time_to_live=_TTL,
                        rate_limit_strategy=strategy(None if rates is None else rates[key]),
                    ),
                )
                for key, bucket in self.buckets.items()
            ]
        )


class RateLimitQuotaService(rlqs_grpc.RateLimitQuotaServiceServicer):
    """The servicer, and the task that moves the quota every TICK (`start`/`stop`). `objectives`:
    the priority of each objective the EPP knows (GIE's InferenceObjectives), read at each decision;
    `seen` counts the requests the EPP itself receives per objective (the ext_proc server feeds it)."""

    def __init__(
        self,
        quota: EnvoyQuota,
        metrics: EppMetrics,
        clock: Callable[[], float] = time.monotonic,
        objectives: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.quota = quota
        self._metrics = metrics
        self._clock = clock
        self._objectives = objectives
        self.seen = ObjectiveCounts(objectives, clock=clock)
        self._streams: set[_Stream] = set()
        self._task: asyncio.Task[None] | None = None
        self._limited_since: float | None = None  # when the limit was set (None: none)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rate-limit-quota")

    async def stop(self) -> None:
        """Stop deciding and end every stream (the gateway reopens it to a serving EPP). A
        task that had failed is logged, not raised: the EPP's shutdown goes on."""
        try:
            await cancel_and_wait(self._task)
        except Exception:
            log.exception("the rate-limit quota had stopped deciding")
        self._task = None
        for stream in self._streams:
            stream.send(None)

    async def StreamRateLimitQuotas(
        self,
        request_iterator: AsyncIterator[rlqs.RateLimitQuotaUsageReports],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = _Stream(context.peer())
        self._streams.add(stream)
        self._metrics.quota_streams.set(len(self._streams))
        log.info("rate-limit quota stream from %s opened", stream.peer)
        reader = asyncio.ensure_future(self._read(stream, request_iterator))
        try:
            while (reply := await stream.outbox.get()) is not None:
                await context.write(reply)
        finally:
            reader.cancel()
            self._streams.discard(stream)
            self._metrics.quota_streams.set(len(self._streams))
            self._count_buckets()
            log.info("rate-limit quota stream from %s closed", stream.peer)

    async def _read(self, stream: _Stream, reports: AsyncIterator[rlqs.RateLimitQuotaUsageReports]) -> None:
        try:
            async for report in reports:
                self._reported(stream, report)
        except Exception:
            log.warning(
                "rate-limit quota stream from %s: its reports failed, ending it", stream.peer, exc_info=True
            )
        finally:
            stream.send(None)

    def _reported(self, stream: _Stream, report: rlqs.RateLimitQuotaUsageReports) -> None:
        """A report's buckets: their demand since each was last reported (a new bucket's first
        report, sent at once, holds that bucket only; the others keep theirs)."""
        now = self._clock()
        counts: dict[bytes, tuple[_Bucket, int, int]] = {}
        for usage in report.bucket_quota_usages:
            key = usage.bucket_id.SerializeToString(deterministic=True)
            bucket = stream.buckets.get(key)
            if bucket is None:
                if len(stream.buckets) >= MAX_BUCKETS:
                    continue
                bucket = stream.buckets[key] = _Bucket(usage.bucket_id, _objective(usage.bucket_id))
            _, requests, denied = counts.get(key, (bucket, 0, 0))
            allowed = usage.num_requests_allowed
            counts[key] = (
                bucket,
                requests + allowed + usage.num_requests_denied,
                denied + usage.num_requests_denied,
            )
            self._metrics.quota_reported.labels("allowed").inc(allowed)
            self._metrics.quota_reported.labels("denied").inc(usage.num_requests_denied)
        for bucket, requests, denied in counts.values():
            if bucket.reported is not None and now > bucket.reported:
                bucket.demand = requests / (now - bucket.reported)
            bucket.covered_from, bucket.reported, bucket.denied = bucket.reported, now, denied > 0
        self._count_buckets()
        rates = self._allotments(self.quota.rate).get(stream)
        if rates is not None or stream.limited:  # refresh the TTL, or lift the buckets it holds
            stream.send(stream.assignment(rates, now))

    def _count_buckets(self) -> None:
        self._metrics.quota_buckets.set(sum(len(stream.buckets) for stream in self._streams))

    def _allotments(
        self, rate: float | None, floor: float = MIN_RATE
    ) -> dict[_Stream, dict[bytes, float] | None]:
        """Each stream's rate per bucket out of `rate` (epp.flowcontrol.quota_priority; only
        streams with buckets: the others hold nothing)."""
        streams = [s for s in self._streams if s.buckets]
        if rate is None:
            return dict.fromkeys(streams)
        allotted = allot(rate, self._demands(streams), floor)
        return {s: {key: allotted[s, key] for key in s.buckets} for s in streams}

    def _demands(self, streams: list[_Stream]) -> list[Demand[tuple[_Stream, bytes]]]:
        """Every bucket's priority and demand: what the gateways reported, or, where more, what the
        EPP received of that objective over the last window (their last reports are up to 5 s
        old), spread over the objective's buckets as they reported (equally if none did). What
        the EPP received of an objective no gateway has a bucket for is in their default buckets."""
        priorities = self._objectives()
        reported: dict[str | None, float] = {}
        holders: dict[str | None, int] = {}
        for stream in streams:
            for bucket in stream.buckets.values():
                reported[bucket.objective] = reported.get(bucket.objective, 0.0) + bucket.demand
                holders[bucket.objective] = holders.get(bucket.objective, 0) + 1
        seen: dict[str | None, float] = {}
        for name, rate in self.seen.rates().items():
            objective = name if name in holders else None
            seen[objective] = seen.get(objective, 0.0) + rate
        demands = []
        for stream in streams:
            for key, bucket in stream.buckets.items():
                objective = bucket.objective
                total, received = reported[objective], seen.get(objective, 0.0)
                demand = bucket.demand
                if received > total:
                    demand = received * bucket.demand / total if total > 0 else received / holders[objective]
                priority = (
                    DEFAULT_PRIORITY if objective is None else priorities.get(objective, DEFAULT_PRIORITY)
                )
                demands.append(Demand((stream, key), priority, demand))
        return demands

    def binding(self) -> float:
        """The share of the limit held by the buckets it may still hold back: a bucket whose own
        last report covered only time under the limit, without a denial in it, has demand below
        its allotment (1 while no gateway has reported anything)."""
        rate = self.quota.rate or 1.0
        allotments = self._allotments(rate, floor=0.0)
        if not allotments:
            return 1.0
        since = self._limited_since

        def clear(bucket: _Bucket) -> bool:
            covered = bucket.covered_from  # its own: a new bucket's first report holds it alone
            return since is not None and covered is not None and covered >= since and not bucket.denied

        held = sum(
            rates[key]
            for stream, rates in allotments.items()
            if rates is not None
            for key, bucket in stream.buckets.items()
            if not clear(bucket)
        )
        return min(1.0, held / rate)

    def step(self) -> None:
        """One decision of the quota, pushed."""
        self.seen.sample()
        self.push(self.quota.tick(self.binding()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.step()

    def push(self, rate: float | None) -> None:
        """Send each stream its buckets' rates where one changed by more than CHANGE, or its limit
        is due for a refresh, or the ALLOW_ALL that lifts the limits it holds."""
        self._metrics.quota_rate.set(0.0 if rate is None else rate)
        now = self._clock()
        if rate is None:
            self._limited_since = None
        elif self._limited_since is None:
            self._limited_since = now
        for stream, rates in self._allotments(rate).items():
            if rates is None:
                if stream.limited:
                    stream.send(stream.assignment(None, now))
            elif stream.changed(rates) or now - stream.sent >= REFRESH:
                stream.send(stream.assignment(rates, now))


def _objective(bucket: rlqs.BucketId) -> str | None:
    """The objective a bucket's id names (our bootstrap's key), None for a bucket naming none."""
    return bucket.bucket.get(QUOTA_OBJECTIVE_KEY) or None
