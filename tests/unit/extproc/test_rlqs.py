"""The rate-limit quota service over real gRPC (grpc.aio on 127.0.0.1): a report while there is
no limit is not answered (Envoy allows what nothing covers); a limit is pushed to every stream at
once as a token bucket of whole seconds and a TTL, each stream's share mostly by the demand it
reported, an idle one's unused share not lifting the limit from under a busy one; a report while
limited is answered (refreshing the TTL); lifting sends ALLOW_ALL; a closed stream leaves the
share to the others; the metrics show it all."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import grpc
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore
from epp.extproc import rlqs as rlqs_service
from epp.extproc.messages import read_headers
from epp.extproc.pb import ext_proc_grpc, rlqs, rlqs_grpc
from epp.extproc.rlqs import ASSIGNMENT_TTL_SECONDS, BURST_SECONDS, RateLimitQuotaService, strategy
from epp.extproc.server import _objective as server_objective
from epp.extproc.server import bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.flowcontrol.envoy_quota import EnvoyQuota
from epp.flowcontrol.overload import OverloadGuard
from epp.framework import PluginContext
from epp.headers import LLMD_OBJECTIVE_HEADER, OBJECTIVE_HEADER
from epp.metrics.exporter import EppMetrics
from tests.unit.extproc.test_attributes import received_at
from tests.unit.flowcontrol.test_flow_control import headers_msg, read

BUCKET = rlqs.BucketId(bucket={"name": "inference"})
OBJECTIVES = {"chat": 1, "batch": -1}  # critical and sheddable; "stranger": not known, priority 0


def bucket(objective: str) -> rlqs.BucketId:
    """The bootstrap's bucket of `objective` ("": the default bucket)."""
    return rlqs.BucketId(bucket={"name": "inference", "objective": objective}) if objective else BUCKET


class Gateway:
    """One Envoy's stream: reports sent through a queue, answers collected."""

    def __init__(self, stub: rlqs_grpc.RateLimitQuotaServiceStub) -> None:
        self.reports: asyncio.Queue[rlqs.RateLimitQuotaUsageReports | None] = asyncio.Queue()
        self.call = stub.StreamRateLimitQuotas(self._outgoing())
        self.answers: asyncio.Queue[rlqs.RateLimitQuotaResponse] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _outgoing(self) -> AsyncIterator[rlqs.RateLimitQuotaUsageReports]:
        while (report := await self.reports.get()) is not None:
            yield report

    async def _read(self) -> None:
        async for answer in self.call:
            self.answers.put_nowait(answer)

    def report(self, allowed: int, denied: int = 0) -> None:
        self.report_buckets({"": (allowed, denied)})

    def report_buckets(self, counts: Mapping[str, tuple[int, int]]) -> None:
        """One report of several buckets, by their objective ("": the default bucket): (allowed,
        denied) each."""
        usages = [
            rlqs.RateLimitQuotaUsageReports.BucketQuotaUsage(
                bucket_id=bucket(objective), num_requests_allowed=allowed, num_requests_denied=denied
            )
            for objective, (allowed, denied) in counts.items()
        ]
        self.reports.put_nowait(rlqs.RateLimitQuotaUsageReports(domain="epp", bucket_quota_usages=usages))

    async def answer(self) -> rlqs.RateLimitQuotaResponse:
        return await asyncio.wait_for(self.answers.get(), 5)

    async def close(self) -> None:
        self.reports.put_nowait(None)
        await asyncio.wait_for(self._reader, 5)


class Limit:
    """The quota's inputs: the guard's counts and the clock, moved by hand."""

    def __init__(self) -> None:
        self.admitted = 0
        self.refused = 0
        self.now = 1000.0


def quota_service(
    objectives: Mapping[str, int] | None = None,
) -> tuple[RateLimitQuotaService, Limit, EppMetrics]:
    """The service on the test's `Limit`, whose clock is also the EPP's CPU time (always busy)."""
    limit, metrics = Limit(), EppMetrics()
    clock = lambda: limit.now  # noqa: E731
    quota = EnvoyQuota(lambda: limit.admitted, lambda: limit.refused, clock=clock, cpu=clock)
    known = dict(objectives or {})
    return RateLimitQuotaService(quota, metrics, clock, lambda: known), limit, metrics


@asynccontextmanager
async def serving(
    objectives: Mapping[str, int] | None = None,
) -> AsyncIterator[tuple[RateLimitQuotaService, Limit, EppMetrics, grpc.aio.Channel]]:
    """The service on a gRPC server of its own, a channel to it; both closed on the way out."""
    service, limit, metrics = quota_service(objectives)
    server = grpc.aio.server()
    rlqs_grpc.add_RateLimitQuotaServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield service, limit, metrics, channel
    finally:
        await channel.close()
        await server.stop(None)


async def until(done: object) -> None:
    assert callable(done)
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never")


def token_bucket(answer: rlqs.RateLimitQuotaResponse) -> tuple[int, int, int]:
    (action,) = answer.bucket_action
    assert action.bucket_id == BUCKET
    assignment = action.quota_assignment_action
    assert assignment.assignment_time_to_live.seconds == ASSIGNMENT_TTL_SECONDS
    bucket = assignment.rate_limit_strategy.token_bucket
    assert bucket.fill_interval.seconds == 1 and bucket.fill_interval.nanos == 0  # Envoy: whole seconds
    return bucket.tokens_per_fill.value, bucket.max_tokens, 1


def test_the_strategy_of_a_rate() -> None:
    assert strategy(None).blanket_rule == strategy(None).ALLOW_ALL
    bucket = strategy(250.4).token_bucket
    assert (bucket.tokens_per_fill.value, bucket.max_tokens) == (250, round(250.4 * BURST_SECONDS + 0.5))
    tiny = strategy(0.2).token_bucket  # never a bucket that refuses everything
    assert (tiny.tokens_per_fill.value, tiny.max_tokens) == (1, 1)
    for huge in (2.0**40, float("inf"), float("nan")):  # uint32 fields: the most they hold
        bucket = strategy(huge).token_bucket
        assert bucket.tokens_per_fill.value == 2**32 - 1
        assert bucket.max_tokens == math.ceil((2**32 - 1) * BURST_SECONDS)


async def test_a_huge_limit_is_sent_clamped_and_a_failed_quota_does_not_stop_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving() as (service, _, _, channel):
        one = Gateway(rlqs_grpc.RateLimitQuotaServiceStub(channel))
        one.report(allowed=1)
        await until(lambda: any(s.buckets for s in service._streams))
        service.push(2.0**40)  # once a ValueError out of protobuf, ending the quota's task
        assert token_bucket(await one.answer())[0] == 2**32 - 1

        def broken() -> int:
            raise RuntimeError("the guard's count is gone")

        service.quota._refused = broken  # the quota's task fails at its next tick
        service.start()
        task = service._task
        assert task is not None
        await until(task.done)
        with caplog.at_level(logging.ERROR, "epp.extproc.rlqs"):
            await service.stop()  # logged, not raised: the EPP's shutdown goes on
        assert "the rate-limit quota had stopped deciding" in caplog.text
        assert "the guard's count is gone" in caplog.text
        await asyncio.wait_for(one._reader, 5)  # the streams ended all the same


async def test_a_limit_is_pushed_shared_by_demand_refreshed_and_lifted() -> None:
    async with serving() as (service, limit, metrics, channel):
        stub = rlqs_grpc.RateLimitQuotaServiceStub(channel)
        one, two = Gateway(stub), Gateway(stub)
        one.report(allowed=1)
        two.report(allowed=1)
        await until(lambda: metrics.quota_streams._value.get() == 2)
        service.push(service.quota.tick())  # nothing refused: no limit, nothing sent
        await asyncio.sleep(0.05)
        assert one.answers.empty() and two.answers.empty()

        # Demand over the same second: the second gateway sees three times the first's.
        limit.now += 1.0
        for gateway, allowed in ((one, 100), (two, 300)):
            gateway.report(allowed)
        await until(lambda: sum(s.demand > 0 for s in service._streams) == 2)
        for refused in (0, 0, 400):  # the guard refuses: a limit
            limit.now += 0.25
            limit.admitted, limit.refused = limit.admitted + 100, refused
            service.push(service.quota.tick())
        rate = service.quota.rate
        assert rate is not None and rate == service.quota.capacity()  # measured
        first, second = token_bucket(await one.answer()), token_bucket(await two.answer())
        # a tenth equally, the rest by demand (1:3)
        assert (first[0], second[0]) == (round(rate * 0.275), round(rate * 0.725))
        assert metrics.quota_rate._value.get() == pytest.approx(rate)

        one.report(allowed=5, denied=7)  # answered while limited: the TTL refreshed
        token_bucket(await one.answer())
        await until(
            lambda: (
                metrics.registry.get_sample_value(
                    "llm_d_epp_rate_limit_quota_reported_requests_total", {"outcome": "denied"}
                )
                == 7
            )
        )

        service.push(rate)  # unchanged and not due: nothing
        limit.now += rlqs_service.REFRESH  # a refresh due: sent again unchanged
        service.push(rate)
        token_bucket(await one.answer())
        token_bucket(await two.answer())

        await two.close()  # its share goes to the one left
        await until(lambda: metrics.quota_streams._value.get() == 1)
        service.push(rate)
        assert token_bucket(await one.answer())[0] == round(rate)

        for _ in range(8):  # two quiet seconds: the quota lifts the limit, and says so at once
            limit.now += 0.25
            service.push(service.quota.tick())
        assert service.quota.rate is None
        answers = [await one.answer()]
        while len(answers) < 10 and answers[-1].bucket_action[
            0
        ].quota_assignment_action.rate_limit_strategy.HasField("token_bucket"):
            answers.append(await one.answer())
        (action,) = answers[-1].bucket_action  # raised on the way, then allow all
        assert action.quota_assignment_action.rate_limit_strategy.blanket_rule == strategy(None).ALLOW_ALL
        assert all(
            a.bucket_action[0].quota_assignment_action.rate_limit_strategy.token_bucket.tokens_per_fill.value
            >= round(rate)
            for a in answers[:-1]
        )
        assert metrics.quota_rate._value.get() == 0
        service.push(service.quota.tick())
        one.report(allowed=3)
        await asyncio.sleep(0.05)
        assert one.answers.empty()  # nothing more to say while there is no limit
        await service.stop()  # ends the streams: the server can stop without waiting for them
        await asyncio.wait_for(one._reader, 5)


async def test_a_rising_limit_changes_the_gateways_bucket_once_a_second() -> None:
    """Envoy 1.40 replaces a bucket's token bucket, full, whenever its figures change: a limit
    pushed risen every tick would hand out BURST_SECONDS of its rate every tick (about twice the
    limit let through while it rises)."""
    async with serving() as (service, limit, _, channel):
        one = Gateway(rlqs_grpc.RateLimitQuotaServiceStub(channel))
        one.report(allowed=1)
        await until(lambda: any(s.buckets for s in service._streams))
        for refused in (0,) * 10 + (800,):  # a second at full load, then a tick refusing: a limit
            limit.now += rlqs_service.TICK
            limit.admitted, limit.refused = limit.admitted + 80, limit.refused + refused
            service.push(service.quota.tick())
        assert service.quota.rate is not None
        for _ in range(40):  # four seconds, the bucket binding: the EPP gets the limit, refuses none
            limit.now += rlqs_service.TICK
            limit.admitted += round(service.quota.rate * rlqs_service.TICK)
            service.push(service.quota.tick())
            await until(lambda: all(s.outbox.empty() for s in service._streams))  # written
        assert service.quota.rate is not None
        await service.stop()
        await asyncio.wait_for(one._reader, 5)
        sent = []
        while not one.answers.empty():
            sent.append(token_bucket(one.answers.get_nowait())[:2])
        changes = sum(b != a for a, b in itertools.pairwise(sent))
        assert 2 <= changes <= 5, sent  # it rose, one step a second at most


async def test_an_idle_gateway_does_not_lift_the_limit_from_under_a_busy_one() -> None:
    """Two gateways, one idle, one flooding: the busy one gets nearly the whole limit, and the
    EPP, receiving what its bucket lets through, keeps the limit (an idle gateway's unused share
    is not a fall in demand); once the flood ends, the limit is lifted."""
    async with serving() as (service, limit, _, channel):
        stub = rlqs_grpc.RateLimitQuotaServiceStub(channel)
        idle = Gateway(stub)
        idle.report(allowed=1)
        await until(lambda: any(s.buckets for s in service._streams))
        (idle_stream,) = service._streams
        busy = Gateway(stub)
        busy.report(allowed=1)
        await until(lambda: sum(bool(s.buckets) for s in service._streams) == 2)
        (busy_stream,) = service._streams - {idle_stream}

        async def reported(gateway: Gateway, allowed: int, denied: int = 0) -> None:
            stream = busy_stream if gateway is busy else idle_stream
            before = stream.last_report
            gateway.report(allowed, denied)
            await until(lambda: stream.last_report != before)

        limit.now += 1.0
        await reported(idle, 0)
        await reported(busy, 1000)
        for refused in (0,) * 10 + (800,):  # a second at full load, then refusals: a limit
            limit.now += rlqs_service.TICK
            limit.admitted, limit.refused = limit.admitted + 80, limit.refused + refused
            service.step()
        first = service.quota.rate
        assert first is not None
        flood = 20 * first  # requests per second the busy gateway receives

        async def run(seconds: float, demand: float) -> list[float | None]:
            """Ticks; the EPP receives what the busy gateway's bucket lets through, and the
            gateways report every 5 s (Envoy 1.40)."""
            rates = []
            for tick in range(1, round(seconds / rlqs_service.TICK) + 1):
                limit.now += rlqs_service.TICK
                share = None if busy_stream.assigned is None else sum(busy_stream.assigned.values())
                let_through = demand if share is None else min(demand, share)
                limit.admitted += round(let_through * rlqs_service.TICK)
                if tick % round(5 / rlqs_service.TICK) == 0:
                    await reported(idle, 0)
                    await reported(busy, round(let_through * 5), round((demand - let_through) * 5))
                service.step()
                rates.append(service.quota.rate)
            return rates

        held = await run(8.0, flood)
        assert None not in held, held  # the busy gateway is still held back: the limit stays
        rate = held[-1]
        assert rate is not None and first < rate < flood
        assert busy_stream.assigned is not None and sum(busy_stream.assigned.values()) > 0.9 * rate
        quiet = await run(4.0, first / 4)  # the flood is over
        assert quiet[-1] is None, quiet
        await service.stop()
        await asyncio.wait_for(busy._reader, 5)
        await asyncio.wait_for(idle._reader, 5)


async def test_a_gateway_slow_to_read_holds_only_the_latest_assignment() -> None:
    async with serving() as (service, _, _, channel):
        one = Gateway(rlqs_grpc.RateLimitQuotaServiceStub(channel))
        one.report(allowed=1)
        await until(lambda: any(s.buckets for s in service._streams))
        (stream,) = service._streams
        for rate in range(100, 10_100, 100):  # faster than the stream writes: superseded
            service.push(float(rate))
        assert stream.outbox.qsize() == 1
        assert token_bucket(await one.answer())[0] == 10_000
        await service.stop()
        await asyncio.wait_for(one._reader, 5)
        assert one.answers.empty()  # nothing but the latest was written


async def test_reports_that_fail_end_the_stream_with_a_warning_naming_the_gateway(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving() as (service, _, _, channel):

        def broken(*_: object) -> None:
            raise RuntimeError("unreadable report")

        monkeypatch.setattr(service, "_reported", broken)
        one = Gateway(rlqs_grpc.RateLimitQuotaServiceStub(channel))
        with caplog.at_level(logging.WARNING, "epp.extproc.rlqs"):
            one.report(allowed=1)
            await asyncio.wait_for(one._reader, 5)  # the stream ended
        (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert record.getMessage().startswith("rate-limit quota stream from ipv")
        assert "its reports failed" in record.getMessage()
        assert record.exc_info is not None and "unreadable report" in str(record.exc_info[1])


def rates_by_bucket(answer: rlqs.RateLimitQuotaResponse) -> dict[str, int]:
    """Tokens per second of each bucket in an answer, by its objective ("" for the default)."""
    return {
        action.bucket_id.bucket.get("objective", ""): (
            action.quota_assignment_action.rate_limit_strategy.token_bucket.tokens_per_fill.value
        )
        for action in answer.bucket_action
    }


async def test_critical_buckets_are_served_first_and_sheddable_ones_get_the_rest() -> None:
    """One gateway, a bucket per objective: the critical objective's bucket may take the whole
    limit, the priority-0 band (the default bucket and an objective the EPP does not know, as GIE
    treats it) shares what the critical demand leaves, and the sheddable bucket gets the rest."""
    async with serving(OBJECTIVES) as (service, limit, metrics, channel):
        one = Gateway(rlqs_grpc.RateLimitQuotaServiceStub(channel))
        every = {"chat": (1, 0), "batch": (1, 0), "": (1, 0), "stranger": (1, 0)}
        one.report_buckets(every)
        await until(lambda: any(len(s.buckets) == 4 for s in service._streams))
        assert metrics.quota_buckets._value.get() == 4
        limit.now += 1.0  # a second's demand: 50 critical, 20 + 10 at priority 0, 500 sheddable
        one.report_buckets({"chat": (50, 0), "batch": (500, 0), "": (20, 0), "stranger": (10, 0)})
        await until(lambda: any(s.demand == 580 for s in service._streams))
        service.quota.rate = 200.0  # the limit (a report is answered with it)
        service.push(200.0)
        rates = rates_by_bucket(await one.answer())
        # priority 0 shares 200 - 50 = 150 as 20:10 (a tenth equally); batch 200 - 50 - 30 = 120
        assert rates == {"chat": 200, "": round(150 * 0.65), "stranger": round(150 * 0.35), "batch": 120}

        # The critical demand doubles: the EPP sees it at once (its own count), before any report
        # (the gateway's next is up to 5 s away), and takes it from the sheddable bucket.
        service.seen.sample()
        for _ in range(100):  # over the next second
            service.seen.seen("chat")
        limit.now += 1.0
        service.seen.sample()
        service.push(200.0)
        assert rates_by_bucket(await one.answer())["batch"] == 200 - 100 - 30

        # Critical demand over the whole limit: the sheddable bucket keeps a token a second.
        limit.now += 1.0
        one.report_buckets({"chat": (400, 0), "batch": (120, 380), "": (20, 0), "stranger": (10, 0)})
        await until(lambda: any(s.demand == 930 / 2 for s in service._streams))  # over 2 s
        service.seen.sample()
        service.push(200.0)
        rates = rates_by_bucket(await one.answer())
        assert (rates["chat"], rates["batch"]) == (200, 1)

        # A new bucket's first report (Envoy sends it at once, with that bucket only) leaves the
        # others' demand as their last report measured it.
        limit.now += 0.5
        one.report_buckets({"newcomer": (1, 0)})
        await until(lambda: any(len(s.buckets) == 5 for s in service._streams))
        assert [s.demand for s in service._streams] == [930 / 2]
        await service.stop()
        await asyncio.wait_for(one._reader, 5)
        await until(lambda: metrics.quota_buckets._value.get() == 0)  # its stream closed


async def test_the_same_objective_on_two_gateways_shares_its_band_by_demand() -> None:
    async with serving(OBJECTIVES) as (service, limit, _, channel):
        stub = rlqs_grpc.RateLimitQuotaServiceStub(channel)
        one, two = Gateway(stub), Gateway(stub)
        one.report_buckets({"chat": (1, 0), "batch": (1, 0)})
        two.report_buckets({"chat": (1, 0), "batch": (1, 0)})
        await until(lambda: sum(len(s.buckets) == 2 for s in service._streams) == 2)
        limit.now += 1.0
        one.report_buckets({"chat": (30, 0), "batch": (100, 0)})
        two.report_buckets({"chat": (10, 0), "batch": (300, 0)})
        await until(lambda: sum(s.demand > 0 for s in service._streams) == 2)
        service.push(100.0)
        first, second = rates_by_bucket(await one.answer()), rates_by_bucket(await two.answer())
        # chat: the whole 100 between them, 3:1; batch: the 60 left, 1:3 (a tenth equally each)
        assert (first["chat"], second["chat"]) == pytest.approx((72.5, 27.5), abs=0.5)
        assert (first["batch"], second["batch"]) == pytest.approx((16.5, 43.5), abs=0.5)
        await service.stop()


async def test_the_ext_proc_server_counts_each_request_it_reads_by_objective() -> None:
    """With the quota, every request whose first message the EPP reads is counted under its
    objective (a name the EPP knows) or with those naming none, a request the guard then refuses
    for its wait too: what reached the EPP, before the gateway's next report."""
    service, limit, _ = quota_service(OBJECTIVES)
    datastore = Datastore()
    datastore.synced = True
    director, _ = build_director(load_config(), datastore, PluginContext())
    guard = OverloadGuard(max_wait=1.0)
    server = ext_proc_server(director, StreamOptions(), None, guard, quota=service)
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ext_proc_grpc.ExternalProcessorStub(channel)
        late = headers_msg({OBJECTIVE_HEADER: "batch"})
        late.attributes["envoy.filters.http.ext_proc"].CopyFrom(received_at(time.time() - 3))
        for message in (
            headers_msg({OBJECTIVE_HEADER: "chat"}),
            late,
            headers_msg({OBJECTIVE_HEADER: "stranger"}),
            headers_msg({}),
        ):
            call = stub.Process()
            await call.write(message)
            await read(call)
            call.cancel()
        assert guard.refused == 1
        limit.now += 1.0
        service.seen.sample()
        assert service.seen.rates() == {"chat": 1.0, "batch": 1.0, None: 2.0}
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_new_buckets_first_report_does_not_clear_the_others_of_the_limit() -> None:
    """Envoy reports a bucket's first request at once, that bucket alone. Another bucket of that
    gateway whose counts (in its next report) began before the limit was set has not shown that
    its demand is below its allotment, even if that report had no denial: it still binds, so the
    limit is not lifted from under it."""
    async with serving(OBJECTIVES) as (service, limit, _, channel):
        one = Gateway(rlqs_grpc.RateLimitQuotaServiceStub(channel))
        one.report(allowed=1)
        await until(lambda: any(s.buckets for s in service._streams))
        (stream,) = service._streams

        async def reported(counts: Mapping[str, tuple[int, int]]) -> None:
            before = stream.last_report
            one.report_buckets(counts)
            await until(lambda: stream.last_report != before)

        limit.now += 5.0
        await reported({"": (500, 0)})  # 100 requests a second, from 1000 to 1005
        limit.now += 4.8
        service.quota.rate = 100.0
        service.push(100.0)  # the limit, at 1009.8
        limit.now += 0.1
        await reported({"chat": (1, 0)})  # a new objective's first request, at 1009.9
        limit.now += 0.1
        await reported({"": (500, 0), "chat": (0, 0)})  # counts from 1005: nearly all before the limit
        assert service.binding() > 0.9
        await service.stop()


def test_the_objective_counted_is_the_one_the_director_reads_when_the_header_repeats() -> None:
    """Envoy sends a repeated header as separate entries; the director (epp.extproc.messages.
    read_headers, as GIE's header map) takes the last one, so the quota's count and the guard's
    sheddable check must take the same, not the first."""
    message = headers_msg({})
    for value in ("batch", "chat"):
        message.request_headers.headers.headers.add(key=OBJECTIVE_HEADER, raw_value=value.encode())
    assert read_headers(message.request_headers)[OBJECTIVE_HEADER] == "chat"
    assert server_objective(message) == "chat"


def test_llm_ds_objective_header_is_read_before_gies() -> None:
    """llm-d-router ebab687 names it x-llm-d-inference-objective, GIE's name its deprecated alias:
    the guard and the quota take the objective the director takes."""
    message = headers_msg({})
    add = message.request_headers.headers.headers.add
    add(key=OBJECTIVE_HEADER, raw_value=b"batch")
    assert server_objective(message) == "batch"
    add(key=LLMD_OBJECTIVE_HEADER, raw_value=b"chat")
    add(key=OBJECTIVE_HEADER, raw_value=b"other")
    assert server_objective(message) == "chat"
