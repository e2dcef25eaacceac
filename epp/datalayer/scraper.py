"""Polls every endpoint's /metrics on the event loop and keeps Endpoint.metrics and health current."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter

from epp.datalayer.engines import BUILTIN_ENGINES, ENGINE_LABEL, EngineMetrics
from epp.datalayer.fetch import KeepAliveGetter, Result, insecure_tls_context, page_worker
from epp.datalayer.promtext import Extractor, Hints
from epp.datastore import Datastore, Endpoint, EndpointMetrics
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.05  # GIE's --refresh-metrics-interval
DEFAULT_TIMEOUT = 1.0  # GIE's per-poll timeout
# An endpoint whose GET is still unanswered after this many of its scrape turns (4 x 50 ms = 200
# ms, the age at which GIE's utilization detector treats metrics as stale) is hung or stalled: its
# last figures (an empty queue, a light KV cache) would otherwise look idle, so every scorer
# preferred it until the timeout above took it out. The datastore leaves such an endpoint out of
# the candidates while any other is ready (Datastore.ready_endpoints). A healthy server answers
# within a turn or two; 0 turns this off.
DEFAULT_OVERDUE_TURNS = 4
# The longest wait between scrapes of an endpoint out of rotation that keeps failing: its wait
# doubles from the interval with each failure, so a page that is costly to read and still refused
# (a page of tens of MB, a large gzip page inflating to its limit) cannot hold the event loop.
FAILING_BACKOFF_MAX = 1.0
# The scraper's task waking up later than this was stalled (its process stopped or not scheduled, a
# long callback or pause), not late by timer jitter: the GETs under way get that much more time
# (MetricsScraper). Lateness below it is counted, so a deadline is judged on time.
STALL_SECONDS = 0.01
# The endpoints are dealt into up to SLICES groups of about SLICE_SIZE, scraped at even offsets
# within each interval: answers then arrive in batches of tens rather than all at once, so a
# request the EPP is routing waits behind a few page reads at most. Batches much smaller than that
# cost more CPU per scrape (a wake-up and an epoll call shared by fewer answers).
SLICES = 16
SLICE_SIZE = 32
# The lines about an endpoint's health come at most once per this many seconds per endpoint, but
# for its first outage and the recovery from a logged one: a new failure reason while it stays out
# of rotation (refused -> HTTP 500 -> timeout; its failing scrapes run up to once a second,
# FAILING_BACKOFF_MAX), and its turns out of and back into rotation (a server restarting in a loop
# turns ten times a second). The state changes not logged are counted in the next line about it;
# an outage not logged is logged once it has lasted past the interval.
REASON_LOG_INTERVAL = 30.0
# A page at least this large is read in the page worker thread (fetch.page_worker), not on the event
# loop: real pages are 10-300 KB (a read of ~40 us), while a hostile one of 3 MiB, just under the
# 4 MiB a gzip page may inflate to, took 120-580 ms to read (a wanted family of 70,000 series),
# all of it a stall of routing. The C reader offers the GIL every 1,024 lines so the loop runs.
OFF_LOOP_PAGE_BYTES = 512 * 1024


@dataclass(frozen=True)
class ScrapeSettings:
    """Where metrics pages are and how to read them: set by the config's data-layer plugins
    (`metrics-data-source`, `core-metrics-extractor`); the defaults are GIE's."""

    scheme: str = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = True
    engines: Mapping[str, EngineMetrics] = field(default_factory=lambda: BUILTIN_ENGINES)
    default_engine: str = "vllm"
    engine_label_key: str = ENGINE_LABEL
    source_type: str = "metrics-data-source"  # the source plugin's type (poll errors' label)
    extractor_type: str = "core-metrics-extractor"  # the extractor plugin's type (extract errors')


def _tls_context(settings: ScrapeSettings) -> ssl.SSLContext:
    return insecure_tls_context() if settings.insecure_skip_verify else ssl.create_default_context()


class ExtractError(ValueError):
    """A page fetched and scanned whose values the engine could not read (non-finite)."""


class _Target:
    """One endpoint being scraped: its connection, how to read its page, and its scrape state."""

    __slots__ = (
        "absent_checked",
        "answered",
        "asked",
        "endpoint",
        "engine",
        "extractor",
        "failures",
        "getter",
        "group",
        "hints",
        "idle",
        "lacking",
        "logged_at",
        "logged_reason",
        "metrics",
        "missed",
        "reading",
        "reason",
        "resume_at",
        "sent_at",
        "unlogged",
        "usual",
    )

    # What each answer is handed to, set by the scraper: its handler bound to this target once (no
    # closure made per GET, no Python frame between the client and the scraper)
    answered: Callable[[Result], None]

    def __init__(
        self,
        endpoint: Endpoint,
        getter: KeepAliveGetter,
        engine: EngineMetrics,
        extractor: Extractor,
        group: int,
    ) -> None:
        self.endpoint = endpoint
        self.group = group  # the slice of the interval it is scraped in
        self.getter = getter
        self.engine = engine
        self.extractor = extractor
        self.hints: Hints = {}  # where its page had each series last time, and what they read
        # The metrics its last page read to, the names the engine asked for on it, and whether
        # each read as on the page before (then the next page is checked for the same first).
        self.metrics: EndpointMetrics | None = None
        self.absent_checked = False  # its first page was checked for what the engine reads
        # Its last page read failed llm-d's extractor (`EngineMetrics.read_page`): so does an
        # idle page that reads the same.
        self.lacking = False
        self.asked: list[str] = []
        self.idle = False
        self.failures = 0
        self.sent_at: float | None = None  # loop time the GET under way was started
        self.missed = 0  # scrape turns that passed while the GET was under way
        self.usual = 0  # turns its last answered GET took: a server slow but steady is not hung
        self.reading = False  # its page is being read in the page worker: no GET until it is read
        self.resume_at = 0.0  # loop time before which a failing endpoint is not scraped again
        # Out of rotation: its last failure reason, the last one logged ("": this outage not
        # logged), when the last line about it was logged (loop time), and how many state changes
        # were not logged since (REASON_LOG_INTERVAL).
        self.reason = ""
        self.logged_reason = ""
        self.logged_at = -math.inf
        self.unlogged = 0


class MetricsScraper:
    """One task scrapes every endpoint, each on its own keep-alive connection: the endpoints are
    dealt into `SLICES` groups, and at each slice's turn within the interval the task starts a
    GET on each of its idle connections; each answer is handled in its connection's read
    callback. A task with its own timeout and sleep per endpoint cost more event-loop work than
    the scrape itself (docs/benchmarks.md). A GET still under way at its turn is not repeated but
    followed by the next one as soon as it ends; one unanswered for `timeout` fails.

    A GET unanswered for `overdue_turns` turns more than the endpoint's last answer took marks it
    `scrape_overdue` until it answers: its metrics are stale, and it is chosen only when no other
    endpoint is ready. (A server whose every answer takes longer than `overdue_turns` is slow, not
    hung: counted from zero it would leave the candidates for part of every scrape, at random.)

    Health: a refused connection (the server is gone) or a scrape timeout (it hangs) marks the
    endpoint unhealthy at once; other failures (non-200, a malformed or cut page) after
    `failures_before_unhealthy` in a row. The first good scrape
    makes it healthy again. GIE relies on Kubernetes readiness for this; standalone mode has none.

    A stall of the scraper is not counted in a timeout: when its task wakes late by more than
    STALL_SECONDS (its process stopped or not scheduled, a long callback or pause), the GETs under
    way get that much more time. The answers that came meanwhile wait unread in their sockets, and
    the loop may run the task's wake-up before it reads them (uvloop runs due timers before it
    polls; asyncio runs a task woken before its poll ahead of the poll's callbacks): on the wall
    clock, one stall longer than the timeout took every endpoint out of rotation at once, and the
    requests held meanwhile got 503 "no ready endpoints". A GET gets the longest one stall since it
    began, not their sum: once the loop runs again it reads what waited, so only the last stall can
    hide an answer, and a loop late by 20-45 ms at every wake-up (a loaded EPP, each a stall) added
    up to 3x the timeout before a hung server left rotation, and without bound as the lateness
    nears the interval."""

    def __init__(
        self,
        datastore: Datastore,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        settings: ScrapeSettings | None = None,
        failures_before_unhealthy: int = 3,
        reason_log_interval: float = REASON_LOG_INTERVAL,
        overdue_turns: int = DEFAULT_OVERDUE_TURNS,
        poll_errors: Counter | None = None,
        extract_errors: Counter | None = None,
    ) -> None:
        settings = settings or ScrapeSettings()
        if settings.default_engine not in settings.engines:
            known = sorted(settings.engines)
            raise ValueError(f"unknown default engine {settings.default_engine!r}; known: {known}")
        if settings.scheme not in ("http", "https"):
            raise ValueError(f"metrics scheme must be http or https, not {settings.scheme!r}")
        self._datastore = datastore
        self.interval = interval
        self._timeout = timeout
        self._engines = dict(settings.engines)
        self._extractors = {name: Extractor(e.names()) for name, e in self._engines.items()}
        self._default_engine = settings.default_engine
        self._engine_label_key = settings.engine_label_key
        self._tls = _tls_context(settings) if settings.scheme == "https" else None
        self._path = settings.path
        self._failures_before_unhealthy = failures_before_unhealthy
        self.overdue_turns = overdue_turns
        self._reason_log_interval = reason_log_interval
        self._targets: dict[str, _Target] = {}
        self._slices: list[dict[str, _Target]] = [{} for _ in range(SLICES)]
        self._next_deadline = math.inf  # of the oldest GET under way, or earlier
        # The task's stalls as (loop time it woke, seconds late), each longer than all after it:
        # the first one after a GET began is the longest since then (_stall_credit).
        self._stalls: list[tuple[float, float]] = []
        self._ticker: asyncio.Task[None] | None = None
        self.scrapes = 0
        self.failures = 0
        # llm-d's datalayer poll errors: every failed scrape, by the source plugin's type
        self._poll_errors = None if poll_errors is None else poll_errors.labels(settings.source_type)
        # and llm-d's extract errors: every page read whose values its extractor would not take
        self._extract_errors = (
            None
            if extract_errors is None
            else extract_errors.labels(settings.source_type, settings.extractor_type)
        )

    async def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="scraper")
        self._datastore.subscribe(on_added=self._watch, on_removed=self._unwatch)

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        await cancel_and_wait(ticker)
        targets = list(self._targets.values())
        self._targets.clear()
        for group in self._slices:
            group.clear()
        for target in targets:
            target.getter.close()

    def engine_for(self, endpoint: Endpoint) -> str:
        engine = endpoint.labels.get(self._engine_label_key, self._default_engine)
        return engine if engine in self._engines else self._default_engine

    def _watch(self, endpoint: Endpoint) -> None:
        if self._ticker is None:  # stopped: the datastore still reports endpoints
            return
        self._unwatch(endpoint)
        engine = self.engine_for(endpoint)
        getter = KeepAliveGetter(
            endpoint.address, endpoint.spec.metrics_port or endpoint.port, self._path, self._tls
        )
        used = min(SLICES, len(self._targets) // SLICE_SIZE + 1)
        group = min(range(used), key=lambda i: len(self._slices[i]))
        target = _Target(endpoint, getter, self._engines[engine], self._extractors[engine], group)
        target.answered = functools.partial(self._answered, target)
        self._targets[endpoint.name] = self._slices[group][endpoint.name] = target
        self._begin(target, asyncio.get_running_loop().time())

    def _unwatch(self, endpoint: Endpoint) -> None:
        target = self._targets.pop(endpoint.name, None)
        if target is not None:
            del self._slices[target.group][endpoint.name]
            target.getter.close()

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        step = self.interval / SLICES
        last = loop.time()
        turn, group = last + step, 0
        while True:
            wake = min(turn, self._next_deadline)
            await asyncio.sleep(wake - loop.time())
            now = loop.time()
            late = now - max(wake, last)  # since it was due, or since it last ran
            if late > STALL_SECONDS:
                self._stalled(now, late)
            last = now
            if now >= self._next_deadline:
                self._expire(now)
            if now < turn:
                continue
            self._scrape(self._slices[group], now)
            turn = turn + step if now - turn < self.interval else now + step  # catch up, up to a round
            group = (group + 1) % SLICES
            for _ in range(SLICES - 1):  # an empty slice's turn needs no wake-up
                if self._slices[group]:
                    break
                turn, group = turn + step, (group + 1) % SLICES

    def _scrape(self, group: dict[str, _Target], now: float) -> None:
        """A slice's turn: start a GET on each idle connection."""
        for target in list(group.values()):
            try:
                if target.sent_at is None and not target.reading:
                    if now >= target.resume_at:
                        self._begin(target, now)
                else:
                    target.missed += 1
                    overdue_at = self.overdue_turns + target.usual
                    if self.overdue_turns and target.missed == overdue_at and target.sent_at is not None:
                        target.endpoint.scrape_overdue = True
            except Exception:  # one endpoint's trouble must not stop the scraping of all
                log.exception("scraping endpoint %s", target.endpoint)

    def _expire(self, now: float) -> None:
        """Fail the GETs past their deadline (the connection is dropped) and find the next
        deadline. A server that cannot answer /metrics within the timeout is hung or stalled
        (e.g. SIGSTOP): requests sent there now would wait for the gateway's bounds. The time
        the scraper itself was stalled since the GET was sent is not the server's."""
        earliest = math.inf
        for target in list(self._targets.values()):
            if target.sent_at is None:
                continue
            deadline = target.sent_at + self._timeout + self._stall_credit(target.sent_at)
            if now < deadline:
                earliest = min(earliest, deadline)
                continue
            target.getter.close()
            self._unanswered_no_more(target)
            target.usual = 0
            self._failed(target, f"no answer within {self._timeout:g}s", immediate=True)
        self._next_deadline = earliest
        stalls = self._stalls
        # A GET begun before a stall had its deadline by the stall's end + timeout + the stall.
        while stalls and stalls[0][0] + stalls[0][1] + self._timeout < now:
            del stalls[0]

    def _stalled(self, now: float, late: float) -> None:
        """The task woke `late` seconds late at `now`: the stalls before no longer than it are
        nobody's longest since."""
        stalls = self._stalls
        while stalls and stalls[-1][1] <= late:
            stalls.pop()
        stalls.append((now, late))

    def _stall_credit(self, sent_at: float) -> float:
        """The longest stall of the task since `sent_at`."""
        for at, late in self._stalls:
            if at > sent_at:
                return late
        return 0.0

    def _begin(self, target: _Target, now: float) -> None:
        target.sent_at = now
        target.missed = 0
        self._next_deadline = min(self._next_deadline, now + self._timeout)
        target.getter.start(target.answered)

    def _answered(self, target: _Target, result: Result) -> None:
        if self._targets.get(target.endpoint.name) is not target:
            return
        self._unanswered_no_more(target)
        target.usual = target.missed
        try:
            page = self._page(target, result)
            if len(page) >= OFF_LOOP_PAGE_BYTES:
                target.reading = True
                read = asyncio.get_running_loop().run_in_executor(page_worker(), self._read, target, page)
                read.add_done_callback(functools.partial(self._read_off_loop, target))
                return
            self._read(target, page)
        except Exception as exc:  # anything a page or a connection can throw is a failed scrape
            self._settle(target, exc)
        else:
            self._settle(target, None)

    @staticmethod
    def _unanswered_no_more(target: _Target) -> None:
        """The GET under way ended (answered, failed or timed out): the server is not overdue."""
        target.sent_at = None
        target.endpoint.scrape_overdue = False

    def _page(self, target: _Target, result: Result) -> bytes:
        """The page a GET brought, or the error it ended in."""
        if isinstance(result, BaseException):
            raise result
        status, body = result
        if status != 200:
            raise ValueError(f"HTTP {status} from {target.endpoint.spec.metrics_hostport}{self._path}")
        self.scrapes += 1
        return body

    def _read_off_loop(self, target: _Target, read: asyncio.Future[None]) -> None:
        target.reading = False
        if self._targets.get(target.endpoint.name) is target and not read.cancelled():
            self._settle(target, read.exception())

    def _settle(self, target: _Target, error: BaseException | None) -> None:
        """A scrape's outcome: its failure counted, or the endpoint back in rotation; then the GET
        an interval that passed meanwhile asked for."""
        endpoint = target.endpoint
        if isinstance(error, ConnectionRefusedError):
            self._failed(target, f"connection refused: {error}", immediate=True)
        elif isinstance(error, TimeoutError):
            self._failed(target, f"timed out: {error}", immediate=True)
        elif isinstance(error, ExtractError):
            self._failed(target, f"unreadable metrics: {error}", immediate=False, polled=False)
            if self._extract_errors is not None:
                self._extract_errors.inc()
        elif error is not None:
            self._failed(target, f"{type(error).__name__}: {error}", immediate=False)
        else:
            if target.lacking and self._extract_errors is not None:
                self._extract_errors.inc()
            target.failures = 0
            if not endpoint.healthy:
                endpoint.healthy = True
                self._recovered(target)
            if endpoint.suspended_until:
                endpoint.suspended_until = 0.0
        if target.missed:
            self._begin(target, asyncio.get_running_loop().time())

    @staticmethod
    def _read(target: _Target, page: bytes) -> None:
        """The endpoint's metrics from its page. An idle server's page (every series the engine
        asked for read on the last page as on the one before, and reads so again) leaves the
        endpoint its metrics object with a new update time: the engine is not run and no new
        object is attached. A busy server's pages are not checked that way first."""
        endpoint, now = target.endpoint, time.monotonic()
        metrics, target.metrics = target.metrics, None  # until this page has read
        if (
            target.idle
            and metrics is not None
            and metrics is endpoint.metrics
            and target.extractor.same(page, target.hints, target.asked)
        ):
            metrics.update_time = now
        else:
            if not target.absent_checked:
                _warn_absent(target, page)
            series = target.extractor.series(page, target.hints)
            try:
                metrics, target.lacking = target.engine.read_page(series, now)
            except ValueError as exc:
                raise ExtractError(str(exc)) from exc
            endpoint.metrics = metrics
            target.asked, target.idle = series.asked, not series.changed
        target.metrics = metrics

    def _failed(self, target: _Target, reason: str, immediate: bool, polled: bool = True) -> None:
        """A failed scrape; `polled` false when the page came but its values could not be read
        (llm-d counts that as an extractor's error, not the source's poll error)."""
        self.failures += 1
        if polled and self._poll_errors is not None:
            self._poll_errors.inc()
        target.failures += 1
        endpoint = target.endpoint
        now = asyncio.get_running_loop().time()
        if endpoint.healthy and (immediate or target.failures >= self._failures_before_unhealthy):
            endpoint.healthy = False
            target.reason = target.logged_reason = reason
            if now - target.logged_at >= self._reason_log_interval:
                log.warning(
                    "endpoint %s unhealthy after %d failed scrape(s): %s%s",
                    endpoint,
                    target.failures,
                    reason,
                    _unlogged(target),
                )
                target.logged_at, target.unlogged = now, 0
            else:  # back in rotation less than an interval ago: a flap, counted
                target.logged_reason = ""
                target.unlogged += 1
        elif not endpoint.healthy:
            self._reason_seen(target, reason, now)
        if not endpoint.healthy:
            target.missed = 0
            backoff = min(self.interval * 2 ** min(target.failures, 16), FAILING_BACKOFF_MAX)
            target.resume_at = now + backoff

    def _recovered(self, target: _Target) -> None:
        """Back in rotation: logged if its outage was, else counted with it."""
        if target.logged_reason:
            log.info("endpoint %s healthy again: its /metrics answered%s", target.endpoint, _unlogged(target))
            target.logged_at, target.unlogged = asyncio.get_running_loop().time(), 0
        else:
            target.unlogged += 1
        target.reason = target.logged_reason = ""

    def _reason_seen(self, target: _Target, reason: str, now: float) -> None:
        """An endpoint out of rotation failed again: a reason other than the last one logged (any,
        if this outage was not logged) is logged, unless a line about it was logged less than
        `reason_log_interval` ago."""
        changed, target.reason = reason != target.reason, reason
        if reason != target.logged_reason and now - target.logged_at >= self._reason_log_interval:
            log.warning("endpoint %s still unhealthy, now: %s%s", target.endpoint, reason, _unlogged(target))
            target.logged_reason, target.logged_at, target.unlogged = reason, now, 0
        elif changed:
            target.unlogged += 1


def _warn_absent(target: _Target, page: bytes) -> None:
    """Once per endpoint, at its first page: a WARNING naming what the engine schedules on that
    the page lacks. It reads as 0 then, silently: a metric flag with a typo, or a server of
    another engine, left scoring blind to that endpoint's load. Read with hints of its own, so
    the endpoint's idle-page check is not changed by it."""
    target.absent_checked = True
    absent = target.engine.absent(target.extractor.series(page, {}))
    if absent:
        log.warning(
            "endpoint %s: its %s page has no %s; read as 0 (engine %s: check the model-server "
            "metric flags or the engine config)",
            target.endpoint,
            target.endpoint.spec.metrics_hostport,
            "; no ".join(absent),
            target.engine.name,
        )


def _unlogged(target: _Target) -> str:
    if not target.unlogged:
        return ""
    return f" ({target.unlogged} state change(s) not logged since the last line)"
