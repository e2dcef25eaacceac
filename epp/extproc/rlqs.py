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
then allows all anyway). Several gateways share the rate in proportion to the demand each
reported (allowed and denied requests per second), but for a tenth of it split equally (a gateway
idle at its last report, up to 5 s ago, is not starved). The limit is lifted only once the
EPP receives clearly less than the shares of the gateways it may still hold back: those whose last
report had denials or did not cover only time under the limit (`binding`); an idle gateway's
unused share does not make it look like the demand fell."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc
from google.protobuf import duration_pb2, wrappers_pb2

from epp.extproc.pb import ratelimit_strategy, rlqs, rlqs_grpc, token_bucket
from epp.flowcontrol.envoy_quota import MAX_RATE, EnvoyQuota
from epp.metrics.exporter import EppMetrics
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between two decisions of the quota
ASSIGNMENT_TTL_SECONDS = 2  # whole seconds (Envoy ignores the fraction)
REFRESH = 1.0  # seconds: a limit is sent again this often, before its TTL runs out
BURST_SECONDS = 0.1  # the bucket holds this long of the rate
CHANGE = 0.02  # a relative change of a stream's share that is pushed before its next report
MAX_BUCKETS = 1024  # per stream: a gateway config with dynamic bucket ids cannot grow this forever
EQUAL_SHARE = 0.1  # of the rate, split equally between the gateways; the rest by their demand

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
class _Stream:
    """One gateway's stream: its buckets, its demand, what it was last assigned."""

    peer: str
    # the next reply, or None to end the stream: only the latest assignment matters
    outbox: asyncio.Queue[_Response | None] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    ended: bool = False
    buckets: dict[bytes, rlqs.BucketId] = field(default_factory=dict)
    demand: float = 0.0  # requests per second in its last report (allowed and denied)
    denied: bool = False  # its last report had denials
    last_report: float | None = None
    covered_from: float | None = None  # the start of the time its last report covered
    assigned: float | None = None  # the share last sent (None: none, or allow-all)
    limited: bool = False  # it holds a token bucket of ours
    sent: float = 0.0  # when (monotonic)

    def send(self, reply: _Response | None) -> None:
        """Queue `reply` in place of one not yet written (it supersedes it); None ends the stream."""
        if self.ended:
            return
        if self.outbox.full():
            self.outbox.get_nowait()
        self.ended = reply is None
        self.outbox.put_nowait(reply)

    def assignment(self, share: float | None, now: float) -> _Response:
        self.assigned, self.limited, self.sent = share, share is not None, now
        per_bucket = None if share is None else share / max(1, len(self.buckets))
        action = _Response.BucketAction.QuotaAssignmentAction(
            assignment_time_to_live=_TTL, rate_limit_strategy=strategy(per_bucket)
        )
        return _Response(
            bucket_action=[
                _Response.BucketAction(bucket_id=bucket, quota_assignment_action=action)
                for bucket in self.buckets.values()
            ]
        )


class RateLimitQuotaService(rlqs_grpc.RateLimitQuotaServiceServicer):
    """The servicer, and the task that moves the quota every TICK (`start`/`stop`)."""

    def __init__(
        self, quota: EnvoyQuota, metrics: EppMetrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.quota = quota
        self._metrics = metrics
        self._clock = clock
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
        now = self._clock()
        requests = denied = 0
        for usage in report.bucket_quota_usages:
            key = usage.bucket_id.SerializeToString(deterministic=True)
            if key not in stream.buckets and len(stream.buckets) < MAX_BUCKETS:
                stream.buckets[key] = usage.bucket_id
            requests += usage.num_requests_allowed + usage.num_requests_denied
            denied += usage.num_requests_denied
        if stream.last_report is not None and now > stream.last_report:
            stream.demand = requests / (now - stream.last_report)
        stream.covered_from, stream.last_report, stream.denied = stream.last_report, now, denied > 0
        self._metrics.quota_reported.labels("allowed").inc(requests - denied)
        self._metrics.quota_reported.labels("denied").inc(denied)
        share = self._shares(self.quota.rate).get(stream)
        if share is not None or stream.limited:  # refresh the TTL, or lift a bucket it holds
            stream.send(stream.assignment(share, now))

    def _shares(self, rate: float | None) -> dict[_Stream, float | None]:
        """Each stream's part of `rate` (only streams with buckets: the others hold nothing)."""
        streams = [s for s in self._streams if s.buckets]
        if rate is None:
            return dict.fromkeys(streams)
        total = sum(s.demand for s in streams)
        if total <= 0:
            return {s: rate / len(streams) for s in streams}
        equal = EQUAL_SHARE / len(streams)
        return {s: rate * (equal + (1 - EQUAL_SHARE) * s.demand / total) for s in streams}

    def binding(self) -> float:
        """The share of the limit held by the gateways it may still hold back: a gateway whose
        last report had no denials and covered only time under the limit has demand below its
        share (1 while no gateway has reported anything)."""
        shares = self._shares(1.0)
        if not shares:
            return 1.0
        since = self._limited_since

        def clear(stream: _Stream) -> bool:
            covered = stream.covered_from
            return since is not None and covered is not None and covered >= since and not stream.denied

        return sum(share or 0.0 for stream, share in shares.items() if not clear(stream))

    def step(self) -> None:
        """One decision of the quota, pushed."""
        self.push(self.quota.tick(self.binding()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.step()

    def push(self, rate: float | None) -> None:
        """Send each stream its share where it changed by more than CHANGE, or its limit is due for
        a refresh, or the ALLOW_ALL that lifts the limit it holds."""
        self._metrics.quota_rate.set(0.0 if rate is None else rate)
        now = self._clock()
        if rate is None:
            self._limited_since = None
        elif self._limited_since is None:
            self._limited_since = now
        for stream, share in self._shares(rate).items():
            if share is None:
                if stream.limited:
                    stream.send(stream.assignment(None, now))
            elif (
                stream.assigned is None
                or abs(share - stream.assigned) > CHANGE * stream.assigned
                or now - stream.sent >= REFRESH
            ):
                stream.send(stream.assignment(share, now))
