"""Engine metric extraction and the scraper against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType

import pytest
import uvloop
from aiohttp import web

from epp.datalayer import scraper as scraper_module
from epp.datalayer.engines import BUILTIN_ENGINES, ENGINE_LABEL
from epp.datalayer.promtext import Extractor, MetricSpec
from epp.datalayer.scraper import SLICE_SIZE, MetricsScraper, ScrapeSettings
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.metrics.exporter import EppMetrics

VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
vllm:num_requests_waiting{model_name="m"} 7.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a, b",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="c",waiting_lora_adapters="d"} 1.8e9
vllm:cache_config_info{block_size="16",num_gpu_blocks="2048",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 4.0
vllm:num_requests_waiting_total{model_name="m"} 99
"""

SCRAPER_LOG = "epp.datalayer.scraper"


def test_vllm_old_kv_name_lora_latest_series_and_cache_info() -> None:
    engine = BUILTIN_ENGINES["vllm"]
    metrics = engine.read(Extractor(engine.names()).extract(VLLM_PAGE), now=5.0)
    assert (metrics.running_requests_size, metrics.waiting_queue_size) == (3, 7)
    assert metrics.kv_cache_usage == 0.25
    assert metrics.active_models == {"c"}
    assert metrics.waiting_models == {"d"}
    assert metrics.max_active_models == 2
    assert (metrics.cache_block_size, metrics.cache_num_blocks) == (16, 2048)
    assert metrics.update_time == 5.0


def test_new_vllm_kv_name_wins_over_the_old_one() -> None:
    page = 'vllm:kv_cache_usage_perc{model_name="m"} 0.5\nvllm:gpu_cache_usage_perc{model_name="m"} 0.1\n'
    engine = BUILTIN_ENGINES["vllm"]
    assert engine.read(Extractor(engine.names()).extract(page), 0).kv_cache_usage == 0.5


def test_sglang_and_triton_names() -> None:
    sglang = BUILTIN_ENGINES["sglang"]
    page = (
        'sglang:num_queue_reqs{model_name="m"} 4\nsglang:num_running_reqs{model_name="m"} 2\n'
        'sglang:token_usage{model_name="m"} 0.75\n'
        'sglang:cache_config_info{page_size="32",num_pages="100"} 1\n'
    )
    m = sglang.read(Extractor(sglang.names()).extract(page), 0)
    assert (m.waiting_queue_size, m.running_requests_size, m.kv_cache_usage) == (4, 2, 0.75)
    assert (m.cache_block_size, m.cache_num_blocks) == (32, 100)
    triton = BUILTIN_ENGINES["triton-tensorrt-llm"]
    page = (
        'nv_trt_llm_request_metrics{request_type="waiting",model="x"} 6\n'
        'nv_trt_llm_request_metrics{request_type="scheduled",model="x"} 1\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"} 0.5\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per"} 64\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max"} 512\n'
    )
    m = triton.read(Extractor(triton.names()).extract(page), 0)
    assert (m.waiting_queue_size, m.running_requests_size, m.kv_cache_usage) == (6, 1, 0.5)
    assert (m.cache_block_size, m.cache_num_blocks) == (64, 512)


def test_metric_spec_parsing() -> None:
    assert MetricSpec.parse("a:b") == MetricSpec("a:b", ())
    assert MetricSpec.parse('x{t="waiting", u=v}') == MetricSpec("x", (("t", "waiting"), ("u", "v")))
    with pytest.raises(ValueError, match="invalid metric spec"):
        MetricSpec.parse("{bad}")


def test_escaped_label_values() -> None:
    page = 'vllm:lora_requests_info{running_lora_adapters="a\\"b",max_lora="1"} 1\n'
    samples = Extractor(["vllm:lora_requests_info"]).extract(page)
    assert samples["vllm:lora_requests_info"][0].labels["running_lora_adapters"] == 'a"b'


def test_a_family_repeated_in_a_second_group_has_its_first_group_read() -> None:
    """The text format keeps a family's lines in one group; the extractor reads only the group it
    finds rather than walk the whole page for more."""
    page = (
        'vllm:num_requests_waiting{model_name="a"} 1\nvllm:num_requests_running 2\n'
        'vllm:num_requests_waiting{model_name="b"} 4\n'
    )
    samples = Extractor(["vllm:num_requests_waiting"]).extract(page)
    assert [s.value for s in samples["vllm:num_requests_waiting"]] == [1.0]


def test_a_fallback_name_is_not_searched_for_when_the_first_choice_is_there() -> None:
    engine = BUILTIN_ENGINES["vllm"]
    hints: dict[str, int] = {}
    page = b'# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
    assert engine.read(Extractor(engine.names()).series(page, hints), 0).kv_cache_usage == 0.5
    assert hints["vllm:kv_cache_usage_perc"].at == 38  # where its line starts, for the next page
    assert "vllm:gpu_cache_usage_perc" not in hints


class FakeServer:
    """A real HTTP server on 127.0.0.1 whose /metrics text and status the test controls."""

    def __init__(self) -> None:
        self.page = VLLM_PAGE
        self.status = 200
        self.answering = asyncio.Event()  # cleared: every request waits until it is set again
        self.answering.set()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handler(self, request: web.Request) -> web.Response:
        await self.answering.wait()
        return web.Response(text=self.page, status=self.status)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    await fake.start()
    yield fake
    await fake.stop()


async def until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_scraper_fills_metrics_and_tracks_health(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Also logged both ways: an operator reading the log sees an endpoint come back, not only each
    time it left (a flapping server otherwise reads as one that never recovered). Without the
    limit on lines per endpoint, which a flap within it would meet (below)."""
    caplog.set_level(logging.INFO, logger=SCRAPER_LOG)
    datastore = Datastore()
    scraper = MetricsScraper(
        datastore, interval=0.02, timeout=0.5, failures_before_unhealthy=2, reason_log_interval=0
    )
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: endpoint.metrics.waiting_queue_size == 7)
        server.status = 500
        await until(lambda: not endpoint.healthy)
        server.status = 200
        await until(lambda: endpoint.healthy)
        port = server.port
        await server.stop()
        await until(lambda: not endpoint.healthy)  # connection refused: at once
        await server.start(port)
        await until(lambda: endpoint.healthy)
    finally:
        await scraper.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("unhealthy after 2 failed scrape(s)" in m for m in messages)
    assert messages.count(f"endpoint {endpoint} healthy again: its /metrics answered") == 2


async def logging_scraper(
    server: FakeServer, reason_log_interval: float, caplog: pytest.LogCaptureFixture
) -> tuple[MetricsScraper, Endpoint]:
    """A started scraper failing at the first failed scrape, its log captured, over one endpoint
    on `server`."""
    caplog.set_level(logging.INFO, logger=SCRAPER_LOG)
    datastore = Datastore()
    scraper = MetricsScraper(
        datastore, 0.01, 0.5, failures_before_unhealthy=1, reason_log_interval=reason_log_interval
    )
    await scraper.start()
    return scraper, datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))


def scraper_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.name == SCRAPER_LOG]


async def failing_through(
    server: FakeServer, statuses: list[int], reason_log_interval: float, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """The scraper's log lines about one endpoint whose /metrics answers each of `statuses` (at
    least twice each) and then 200 again."""
    scraper, endpoint = await logging_scraper(server, reason_log_interval, caplog)
    try:
        for status in statuses:
            server.status = status
            await until(lambda seen=scraper.failures: scraper.failures >= seen + 2)  # one was under way
        server.status = 200
        await until(lambda: endpoint.healthy)
    finally:
        await scraper.stop()
    return scraper_lines(caplog)


async def test_each_new_failure_reason_of_an_unhealthy_endpoint_is_logged(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only the first: an operator sees HTTP 500 turn into 503 and back while it stays out."""
    logged = await failing_through(server, [500, 503, 500], 0, caplog)
    assert len(logged) == 4, logged
    assert logged[0].startswith("WARNING endpoint Endpoint(e@") and "unhealthy after 1 failed" in logged[0]
    for line, status in zip(logged[1:3], (503, 500), strict=True):
        assert line.startswith("WARNING endpoint Endpoint(e@") and "still unhealthy, now: " in line
        assert line.endswith(f"HTTP {status} from 127.0.0.1:{server.port}/metrics"), line
    assert logged[3].endswith("healthy again: its /metrics answered")


async def test_failure_reasons_are_logged_at_most_once_per_interval_and_the_rest_counted(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A flapping server cannot flood the log: changes within the interval are not logged, and the
    recovery line says how many were left out."""
    logged = await failing_through(server, [500, 503, 500], 3600, caplog)
    assert len(logged) == 2, logged
    assert "unhealthy after 1 failed scrape(s): ValueError: HTTP 500" in logged[0]
    assert logged[1].endswith(
        "healthy again: its /metrics answered (2 state change(s) not logged since the last line)"
    )


async def flapping(
    server: FakeServer,
    flips: int,
    reason_log_interval: float,
    caplog: pytest.LogCaptureFixture,
    settle: float = 0.0,
) -> tuple[list[str], Endpoint]:
    """The scraper's log lines about one endpoint whose /metrics goes 500 and back to 200 `flips`
    times (each turn seen by the scraper), then 500 again for good (three more failed scrapes,
    then `settle` seconds)."""
    caplog.clear()
    scraper, endpoint = await logging_scraper(server, reason_log_interval, caplog)
    try:
        for _ in range(flips):
            server.status = 500
            await until(lambda: not endpoint.healthy)
            server.status = 200
            await until(lambda: endpoint.healthy)
        server.status = 500
        await until(lambda: not endpoint.healthy)
        failures = scraper.failures
        await until(lambda: scraper.failures >= failures + 3)
        await asyncio.sleep(settle)
    finally:
        await scraper.stop()
    return scraper_lines(caplog), endpoint


async def test_a_flapping_endpoint_logs_its_turns_at_most_once_per_interval(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """In and out of rotation ten times a second (a server restarting in a loop): the first outage
    and recovery are logged, the turns after them within the interval only counted."""
    logged, _ = await flapping(server, 5, 3600, caplog)
    assert len(logged) == 2, logged
    assert "unhealthy after 1 failed scrape(s)" in logged[0]
    assert logged[1].endswith("healthy again: its /metrics answered")
    every, _ = await flapping(server, 2, 0, caplog)  # without the limit, every turn
    assert len(every) == 5, every


async def test_an_outage_left_unlogged_as_a_flap_is_logged_once_the_interval_is_over(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The last outage began within the interval of the recovery line; it lasts past it: logged
    then, with the turns left out."""
    logged, endpoint = await flapping(server, 1, 0.3, caplog, settle=1.5)
    assert not endpoint.healthy
    assert len(logged) == 3, logged
    assert "still unhealthy" in logged[2] and "HTTP 500" in logged[2], logged
    assert logged[2].endswith("(1 state change(s) not logged since the last line)"), logged


async def test_one_scrape_timeout_takes_a_hung_endpoint_out_until_it_answers(server: FakeServer) -> None:
    """A hung server (SIGSTOP, a stalled event loop) leaves rotation at its first timeout, not after
    three of them in a row as other failures do, and returns with its first good scrape."""
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=0.2, failures_before_unhealthy=3)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: endpoint.metrics.waiting_queue_size == 7)
        failures = scraper.failures
        server.answering.clear()
        await until(lambda: not endpoint.healthy)
        assert scraper.failures == failures + 1
        server.answering.set()
        await until(lambda: endpoint.healthy)
    finally:
        await scraper.stop()


class ThreadServer:
    """A /metrics server in its own thread: it answers while the event loop's thread is stalled,
    and while `answering` is set (cleared, it hangs: it accepts and does not answer)."""

    def __init__(self) -> None:
        answering = self.answering = threading.Event()
        answering.set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the scraper's connection is

            def do_GET(self) -> None:
                answering.wait(5)  # the test ends first
                page = VLLM_PAGE.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the scraper dropped a hung connection

        self.http = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.http.server_address[1])
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.answering.set()
        self.http.shutdown()
        self.http.server_close()
        self.thread.join()


STALL = 0.8  # seconds the scraper's thread is stalled: longer than its timeout


async def stalled_scrape(monkeypatch: pytest.MonkeyPatch, in_own_step: bool) -> tuple[int, bool]:
    """(failures, healthy) of an endpoint whose server answers at once, after the scraper's thread
    stalled STALL seconds just after sending it a GET: in the scraper's own step, or in another
    callback that a read event runs (a long callback, the process stopped there)."""
    server = ThreadServer()
    loop = asyncio.get_running_loop()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=0.3, overdue_turns=0)
    stalled = False
    stall_reader, stall_writer = socket.socketpair()

    def stall() -> None:
        stall_reader.recv(1)
        time.sleep(STALL)

    loop.add_reader(stall_reader, stall)
    scrape = MetricsScraper._scrape

    def stalling(self: MetricsScraper, group: dict[str, object], now: float) -> None:
        nonlocal stalled
        scrape(self, group, now)  # type: ignore[arg-type]
        if self.scrapes >= 3 and not stalled and endpoint.spec.name in group:
            stalled = True  # a GET just went out; the server answers while this thread sleeps
            if in_own_step:
                time.sleep(STALL)
            else:
                stall_writer.send(b"x")

    monkeypatch.setattr(MetricsScraper, "_scrape", stalling)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: stalled)
        scrapes = scraper.scrapes
        await until(lambda: scraper.scrapes >= scrapes + 3)
        return scraper.failures, endpoint.healthy
    finally:
        await scraper.stop()
        loop.remove_reader(stall_reader)
        stall_reader.close()
        stall_writer.close()
        server.stop()


@pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
@pytest.mark.parametrize("in_own_step", [True, False], ids=["in-its-step", "in-a-read-callback"])
def test_a_scrape_answered_while_the_scraper_was_stalled_is_no_timeout(
    monkeypatch: pytest.MonkeyPatch, loop_factory: Callable[[], asyncio.AbstractEventLoop], in_own_step: bool
) -> None:
    """The scraper's process stalled longer than the timeout (SIGSTOP, a loaded node, a long pause)
    just after sending a GET, which the server answered at once: on resuming, the scraper reads
    the answer waiting in its socket and the endpoint stays in rotation. Its deadline counted the
    stall, and the scraper's wake-up, due by then, ran before the loop read its sockets (asyncio
    after a stall in the scraper's step, uvloop after one in a read callback): every endpoint left
    rotation at once, and the requests held during the stall got 503 "no ready endpoints"
    (tests/integration/test_queue_wait_e2e.py stops the EPP for 1.5 s). On both loops: `epp
    serve` runs on uvloop by default, these tests on asyncio's."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(stalled_scrape(monkeypatch, in_own_step)) == (0, True)


HUNG_TIMEOUT = 1.0


async def hung_detection(loop_lag: tuple[float, float] | None) -> float:
    """Seconds from a /metrics server hanging (it accepts and never answers) to its endpoint out of
    rotation, under a scraper of interval 0.05 s and timeout HUNG_TIMEOUT; with `loop_lag`, the
    loop runs back-to-back CPU-bound callbacks of that many seconds (a loaded EPP): the scraper's
    wake-ups are late by up to that much, all the time."""
    server = ThreadServer()
    loop = asyncio.get_running_loop()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.05, timeout=HUNG_TIMEOUT)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    lagging = loop_lag is not None
    spans = random.Random(0)

    def lag() -> None:
        if lagging:
            assert loop_lag is not None
            end = time.perf_counter() + spans.uniform(*loop_lag)
            while time.perf_counter() < end:
                pass
            loop.call_soon(lag)

    try:
        await until(lambda: endpoint.metrics.waiting_queue_size == 7)
        if loop_lag is not None:
            loop.call_soon(lag)
            await asyncio.sleep(0.5)
        assert endpoint.healthy
        server.answering.clear()
        started = loop.time()
        await until(lambda: not endpoint.healthy)
        return loop.time() - started
    finally:
        lagging = False
        await scraper.stop()
        server.stop()


async def test_a_hung_server_leaves_rotation_within_its_timeout_while_the_event_loop_lags() -> None:
    """Each wake-up of the scraper late behind another callback (20-45 ms, all the time) is no
    stall that an answer could wait unread through: the loop reads its sockets between those
    callbacks. Counting every such lateness out of the timeout (the sum of the scraper's stalls
    since the GET began) took a hung server out of rotation after ~3x the timeout (2.8-3.3 s for
    1 s), and without bound as the lag nears the scrape interval. Now 1.2-1.4 s: the timeout, the
    longest lateness (a timer wake-up waits behind up to 3 such callbacks), and this test's own
    polls, as late."""
    idle = await hung_detection(None)
    lagging = await hung_detection((0.02, 0.045))
    assert idle < HUNG_TIMEOUT + 0.2
    assert lagging < 2 * HUNG_TIMEOUT, f"detected after {lagging:.2f}s (idle loop: {idle:.2f}s)"


async def test_a_scrape_unanswered_for_its_overdue_turns_leaves_the_endpoint_out_while_others_answer(
    server: FakeServer,
) -> None:
    """A hung server's last metrics look idle. Once its GET has gone unanswered for the overdue
    turns (well before the timeout), it stops being a candidate while another endpoint answers,
    is the last resort when none does, and is a candidate again with its next answer."""
    other = FakeServer()
    await other.start()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.05, timeout=30.0, overdue_turns=4)
    await scraper.start()
    hung = datastore.upsert(EndpointSpec("hung", "127.0.0.1", server.port))
    prompt = datastore.upsert(EndpointSpec("prompt", "127.0.0.1", other.port))
    try:
        await until(lambda: hung.metrics.waiting_queue_size == 7 and prompt.metrics.waiting_queue_size == 7)
        assert datastore.ready_endpoints() == [hung, prompt]
        server.answering.clear()
        await until(lambda: hung.scrape_overdue)
        assert datastore.ready_endpoints() == [prompt]
        assert hung.healthy and scraper.failures == 0  # stale, not failed: the timeout is far off
        other.answering.clear()
        await until(lambda: prompt.scrape_overdue)
        assert datastore.ready_endpoints() == [hung, prompt]  # a pool of only slow servers routes
        server.answering.set()
        await until(lambda: not hung.scrape_overdue)
        assert datastore.ready_endpoints() == [hung]
        other.answering.set()
        await until(lambda: not prompt.scrape_overdue)
        assert datastore.ready_endpoints() == [hung, prompt] and scraper.failures == 0
    finally:
        await scraper.stop()
        await other.stop()


class SlowServer(FakeServer):
    """Answers every /metrics GET, each after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.answers = 0

    async def handler(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        response = await super().handler(request)
        self.answers += 1
        return response


async def test_a_server_slow_but_steady_stays_a_candidate_and_is_overdue_once_it_hangs() -> None:
    """Every answer takes 6 turns: overdue is counted from its usual answer, so it does not leave
    the candidates for part of every scrape (it flapped, at random, against a prompt endpoint);
    once it stops answering it is overdue after the usual turns and 4 more."""
    slow = SlowServer(delay=0.12)
    await slow.start()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=30.0, overdue_turns=4)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("slow", "127.0.0.1", slow.port))
    try:
        await until(lambda: slow.answers >= 2)
        seen_overdue = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.8  # 6 or more of its answers
        while loop.time() < end:
            seen_overdue += endpoint.scrape_overdue
            await asyncio.sleep(0.005)
        assert seen_overdue == 0 and datastore.ready_endpoints() == [endpoint]
        slow.answering.clear()
        await until(lambda: endpoint.scrape_overdue)
        assert endpoint.healthy
    finally:
        slow.answering.set()
        await scraper.stop()
        await slow.stop()


async def test_an_unhealthy_endpoint_is_scraped_less_often_until_it_answers(server: FakeServer) -> None:
    """Each failed scrape of an endpoint out of rotation doubles the wait before its next one (up
    to a second): a server whose every answer is costly to read (a gzip body that inflates to the
    body limit, a 60 MB page) must not take the event loop from routing at every interval."""
    requests = 0
    handler = server.handler

    async def counting(request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        return await handler(request)

    server.handler = counting  # type: ignore[method-assign]
    await server.stop()
    await server.start(server.port)
    server.status = 500
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=0.5, failures_before_unhealthy=1)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: not endpoint.healthy)
        before = requests
        await asyncio.sleep(1.0)
        assert requests - before <= 8  # 50 at the interval
        server.status = 200
        await until(lambda: endpoint.healthy, timeout=3)
    finally:
        await scraper.stop()


async def test_engine_label_selects_the_metric_names(server: FakeServer) -> None:
    server.page = 'sglang:num_queue_reqs{model_name="m"} 9\n'
    datastore = Datastore()
    scraper = MetricsScraper(
        datastore, interval=0.02, settings=ScrapeSettings(engine_label_key="example.com/engine")
    )
    await scraper.start()
    labels = MappingProxyType({"example.com/engine": "sglang", ENGINE_LABEL: "vllm"})
    endpoint = datastore.upsert(EndpointSpec("s", "127.0.0.1", server.port, labels=labels))
    try:
        await until(lambda: endpoint.metrics.waiting_queue_size == 9)
        assert scraper.engine_for(endpoint) == "sglang"
        datastore.remove("s")
        scrapes = scraper.scrapes
        await asyncio.sleep(0.1)
        assert scraper.scrapes == scrapes, "a removed endpoint is no longer scraped"
    finally:
        await scraper.stop()


def test_unknown_default_engine_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown default engine 'nope'"):
        MetricsScraper(Datastore(), settings=ScrapeSettings(default_engine="nope"))
    with pytest.raises(ValueError, match="scheme must be http or https"):
        MetricsScraper(Datastore(), settings=ScrapeSettings(scheme="ftp"))


def test_kv_usage_takes_the_fullest_series_and_counts_add_up() -> None:
    page = (
        'vllm:kv_cache_usage_perc{engine="0"} 0.6\nvllm:kv_cache_usage_perc{engine="1"} 0.7\n'
        'vllm:num_requests_waiting{engine="0"} 2\nvllm:num_requests_waiting{engine="1"} 3\n'
    )
    engine = BUILTIN_ENGINES["vllm"]
    metrics = engine.read(Extractor(engine.names()).extract(page), 0)
    assert metrics.kv_cache_usage == 0.7
    assert metrics.waiting_queue_size == 5


@pytest.mark.parametrize("value", ["+Inf", "NaN"])
def test_non_finite_values_fail_the_scrape(value: str) -> None:
    engine = BUILTIN_ENGINES["vllm"]
    page = f'vllm:num_requests_waiting{{model_name="m"}} {value}\n'
    with pytest.raises(ValueError, match="non-finite"):
        engine.read(Extractor(engine.names()).extract(page), 0)


async def test_a_bad_page_is_a_failed_scrape_not_a_dead_poller(server: FakeServer) -> None:
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, failures_before_unhealthy=1)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        server.page = 'vllm:num_requests_waiting{model_name="m"} +Inf\n'
        await until(lambda: not endpoint.healthy)
        endpoint.suspended_until = float("inf")
        server.page = VLLM_PAGE
        await until(lambda: endpoint.healthy and endpoint.suspended_until == 0.0)
    finally:
        await scraper.stop()


async def test_a_hung_endpoint_does_not_hold_up_the_others(server: FakeServer) -> None:
    """One task scrapes every endpoint: a GET left unanswered fails on its own deadline while
    the other endpoints go on being scraped every interval."""
    healthy_server = FakeServer()
    await healthy_server.start()
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, timeout=0.3)
    await scraper.start()
    hung = datastore.upsert(EndpointSpec("hung", "127.0.0.1", server.port))
    fine = datastore.upsert(EndpointSpec("fine", "127.0.0.1", healthy_server.port))
    try:
        await until(lambda: hung.metrics.waiting_queue_size == 7 and fine.metrics.waiting_queue_size == 7)
        server.answering.clear()
        hung_since = asyncio.get_running_loop().time()
        updated = fine.metrics.update_time
        await until(lambda: fine.metrics.update_time > updated)
        await until(lambda: not hung.healthy)
        # Not before its timeout (less an interval: a GET sent just before the server hung).
        assert asyncio.get_running_loop().time() - hung_since >= 0.3 - 0.02
        assert fine.healthy
        updated = fine.metrics.update_time
        await until(lambda: fine.metrics.update_time > updated)
        server.answering.set()
        await until(lambda: hung.healthy)
    finally:
        await scraper.stop()
        await healthy_server.stop()


async def test_many_endpoints_are_dealt_into_slices_each_scraped_every_interval(server: FakeServer) -> None:
    """Past SLICE_SIZE endpoints the fleet is split into slices scraped at different offsets;
    every endpoint is still scraped about once an interval."""
    count = SLICE_SIZE * 2 + 5
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.05, timeout=1.0)
    await scraper.start()
    endpoints = [datastore.upsert(EndpointSpec(f"e{i}", "127.0.0.1", server.port)) for i in range(count)]
    try:
        await until(lambda: all(e.metrics.waiting_queue_size == 7 for e in endpoints))
        used = [len(group) for group in scraper._slices if group]
        assert len(used) == 3 and sum(used) == count and max(used) - min(used) <= SLICE_SIZE
        updated = [e.metrics.update_time for e in endpoints]
        await until(lambda: all(e.metrics.update_time > t for e, t in zip(endpoints, updated, strict=True)))
        for endpoint in endpoints[: SLICE_SIZE + 1]:
            datastore.remove(endpoint.name)
        assert sum(len(group) for group in scraper._slices) == count - SLICE_SIZE - 1
    finally:
        await scraper.stop()


async def test_an_unchanged_page_keeps_the_metrics_object_with_a_new_update_time(server: FakeServer) -> None:
    """An idle server's page reads as before: the endpoint keeps its metrics object, its update
    time moving on; a page where one value changes gets a new one with that value."""
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: endpoint.metrics.waiting_queue_size == 7)
        await until(lambda: scraper.scrapes >= 3)  # the series found, then read where they were
        metrics, updated = endpoint.metrics, endpoint.metrics.update_time
        await until(lambda: endpoint.metrics.update_time > updated)
        assert endpoint.metrics is metrics
        server.page = VLLM_PAGE.replace('{model_name="m"} 3.0', '{model_name="m"} 12.0')
        await until(lambda: endpoint.metrics.running_requests_size == 12)
        assert endpoint.metrics is not metrics
        assert (endpoint.metrics.waiting_queue_size, endpoint.metrics.kv_cache_usage) == (7, 0.25)
        assert endpoint.metrics.active_models == {"c"}
    finally:
        await scraper.stop()


async def test_the_same_bad_page_fails_every_scrape(server: FakeServer) -> None:
    """A page whose values fail the scrape is read again the next time, not taken as unchanged
    (each series on a line of its own, so that no other series' read looks at the bad value)."""
    server.page = "".join(
        f'# TYPE vllm:{name} gauge\nvllm:{name}{{model_name="m"}} {value}\n'
        for name, value in (
            ("num_requests_running", "3.0"),
            ("num_requests_waiting", "7.0"),
            ("kv_cache_usage_perc", "0.25"),
        )
    )
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.02, failures_before_unhealthy=3)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: scraper.scrapes >= 3)
        server.page = server.page.replace("7.0", "NaN")  # the same length: nothing moves
        await until(lambda: not endpoint.healthy)  # three failures in a row
        failures = scraper.failures
        await until(lambda: scraper.failures >= failures + 3)
        assert endpoint.metrics.waiting_queue_size == 7  # the last good page's
    finally:
        await scraper.stop()


def hostile_page(distinct_labels: bool, value: int, size: int = 3 * 1024 * 1024) -> str:
    """A page of `size` bytes, under the 4 MiB a gzip page may inflate to, that is one wanted
    family of tens of thousands of series, each of `value`. Distinct label blocks are each parsed
    by the Python label parser; the same block on every line is read all in C."""
    lines = ["# TYPE vllm:num_requests_waiting gauge\n"]
    length = 0
    while length < size:
        labels = f'model_name="m",i="{len(lines)}"' if distinct_labels else 'model_name="m"'
        lines.append(f"vllm:num_requests_waiting{{{labels}}} {value}\n")
        length += len(lines[-1])
    return "".join(lines)


class HostileServer(FakeServer):
    """Answers its two pages in turn: a page that changes is read whole at every scrape (an
    unchanged one is only checked for being the same)."""

    def __init__(self, pages: tuple[str, str]) -> None:
        super().__init__()
        self.pages = pages
        self.served = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.served += 1
        return web.Response(text=self.pages[self.served % 2])


async def reading_threads(server: HostileServer, scrapes: int, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The threads the scraper read `scrapes` of the server's pages in."""
    threads: set[int] = set()
    read = MetricsScraper._read

    def recorded(target: object, page: bytes) -> None:
        threads.add(threading.get_ident())
        read(target, page)  # type: ignore[arg-type]

    monkeypatch.setattr(MetricsScraper, "_read", staticmethod(recorded))
    datastore = Datastore()
    scraper = MetricsScraper(datastore, interval=0.05, timeout=5.0)
    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: scraper.scrapes >= scrapes and endpoint.metrics.waiting_queue_size > 0, 60)
    finally:
        await scraper.stop()
    assert endpoint.healthy and scraper.failures == 0
    return threads


@pytest.mark.parametrize("distinct_labels", [False, True], ids=["same-labels", "distinct-labels"])
async def test_a_large_hostile_page_is_read_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, distinct_labels: bool
) -> None:
    """A 3 MiB page of one wanted family held the event loop for its whole read (120-980 ms
    here), stalling routing at each scrape: a page past OFF_LOOP_PAGE_BYTES is read in the page
    worker thread, a smaller one on the loop. (The loop's stalls are measured by
    `bench/scrape_gzip_stall.py`; compared here they failed both quiet and loaded.)"""
    pages = (hostile_page(distinct_labels, 1), hostile_page(distinct_labels, 2))
    assert len(pages[0]) >= scraper_module.OFF_LOOP_PAGE_BYTES
    server = HostileServer(pages)
    await server.start()
    loop_thread = threading.get_ident()
    try:
        with monkeypatch.context() as inline:
            inline.setattr(scraper_module, "OFF_LOOP_PAGE_BYTES", 1 << 62)
            assert await reading_threads(server, 2, inline) == {loop_thread}
        with monkeypatch.context() as default:
            threads = await reading_threads(server, 2, default)
    finally:
        await server.stop()
    assert threads and loop_thread not in threads


async def test_what_the_engine_reads_and_the_page_lacks_is_warned_once_per_endpoint(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`--total-queued-requests-metric=foo_bar` (a typo) or a server of another engine read as 0
    for ever without a word, leaving the scorers blind to that endpoint's queue."""
    server.page = 'sglang:num_queue_reqs{model_name="m"} 9\nvllm:num_requests_running{model_name="m"} 3\n'
    scraper, endpoint = await logging_scraper(server, 0, caplog)
    try:
        await until(lambda: endpoint.metrics.running_requests_size == 3)
        scrapes = scraper.scrapes
        await until(lambda: scraper.scrapes >= scrapes + 5)  # more pages: still one line
    finally:
        await scraper.stop()
    assert [line for line in scraper_lines(caplog) if line.startswith("WARNING")] == [
        f"WARNING endpoint {endpoint}: its 127.0.0.1:{server.port} page has no waiting queue "
        "(vllm:num_requests_waiting); no KV-cache use (vllm:kv_cache_usage_perc or "
        "vllm:gpu_cache_usage_perc); read as 0 (engine vllm: check the model-server metric flags "
        "or the engine config)"
    ]
    server.page = VLLM_PAGE
    caplog.clear()
    scraper, endpoint = await logging_scraper(server, 0, caplog)
    try:
        await until(lambda: endpoint.metrics.waiting_queue_size == 7)
    finally:
        await scraper.stop()
    assert not [line for line in scraper_lines(caplog) if line.startswith("WARNING")]


async def test_each_failed_poll_counts_as_llm_ds_datalayer_poll_error(server: FakeServer) -> None:
    """`llm_d_epp_datalayer_poll_errors_total{source_type}`: a scrape the server fails (here HTTP
    500) counts once, under the source plugin's type; one whose page came but whose values could
    not be read (NaN) is no poll error (llm-d counts that against the extractor)."""
    metrics = EppMetrics()
    datastore = Datastore()
    scraper = MetricsScraper(
        datastore,
        interval=0.02,
        settings=ScrapeSettings(source_type="metrics-data-source"),
        poll_errors=metrics.datalayer_poll_errors,
    )

    def poll_errors() -> float | None:
        return metrics.registry.get_sample_value(
            "llm_d_epp_datalayer_poll_errors_total", {"source_type": "metrics-data-source"}
        )

    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: scraper.scrapes >= 2)
        assert poll_errors() == 0.0
        server.page = 'vllm:num_requests_waiting{model_name="m"} NaN\n'
        await until(lambda: scraper.failures >= 2)
        assert poll_errors() == 0.0
        server.status = 500
        failures = scraper.failures
        await until(lambda: (poll_errors() or 0) >= 2)
        assert poll_errors() <= scraper.failures - failures  # type: ignore[operator]
        server.status, server.page = 200, VLLM_PAGE
        await until(lambda: endpoint.healthy)
    finally:
        await scraper.stop()


def extract_fails(page: str, engine: str = "vllm") -> bool:
    spec = BUILTIN_ENGINES[engine]
    return spec.read_page(Extractor(spec.names()).extract(page), 0)[1]


def test_a_page_fails_llm_ds_extractor_when_a_mapped_metric_or_an_integer_label_is_wrong() -> None:
    """As llm-d-router ebab687's core-metrics-extractor: every metric the engine maps must be
    there but the LoRA info, and its integer labels must be integers (empty: not set)."""
    assert not extract_fails(VLLM_PAGE)
    lines = VLLM_PAGE.splitlines(keepends=True)
    assert extract_fails("".join(line for line in lines if "num_requests_waiting{" not in line))
    assert extract_fails("".join(line for line in lines if "cache_config_info" not in line))
    assert not extract_fails("".join(line for line in lines if "lora_requests_info" not in line))
    assert not extract_fails(VLLM_PAGE.replace('max_lora="2"', 'max_lora=""'))
    assert extract_fails(VLLM_PAGE.replace('max_lora="2"', 'max_lora="two"'))
    assert extract_fails(VLLM_PAGE.replace('block_size="16"', 'block_size="16.0"'))
    trtllm = "trtllm_kv_cache_tokens_per_block 32\n"
    assert extract_fails(trtllm, "trtllm-serve")  # its block gauges are mapped, its counts absent


async def test_each_page_llm_ds_extractor_fails_on_counts_as_an_extract_error(server: FakeServer) -> None:
    """`llm_d_epp_datalayer_extract_errors_total{source_type, extractor_type}`: every scrape whose
    page lacks a mapped metric counts (an unchanged page too, whose reading is skipped), and so
    does one whose values cannot be read (NaN). The scrape itself is as before: the page lacking
    the waiting queue is read (as 0), the endpoint stays in rotation; the NaN one fails it."""
    metrics = EppMetrics()
    datastore = Datastore()
    scraper = MetricsScraper(
        datastore,
        interval=0.02,
        settings=ScrapeSettings(source_type="metrics-data-source", extractor_type="core-metrics-extractor"),
        poll_errors=metrics.datalayer_poll_errors,
        extract_errors=metrics.datalayer_extract_errors,
    )
    labels = {"source_type": "metrics-data-source", "extractor_type": "core-metrics-extractor"}

    def extract_errors() -> float:
        return metrics.registry.get_sample_value("llm_d_epp_datalayer_extract_errors_total", labels) or 0.0

    await scraper.start()
    endpoint = datastore.upsert(EndpointSpec("e", "127.0.0.1", server.port))
    try:
        await until(lambda: scraper.scrapes >= 3)
        assert extract_errors() == 0.0
        server.page = "".join(line for line in VLLM_PAGE.splitlines(keepends=True) if "waiting{" not in line)
        await until(lambda: extract_errors() >= 1)
        scrapes, counted = scraper.scrapes, extract_errors()  # both counted as a page is read
        await until(lambda: scraper.scrapes >= scrapes + 5)
        assert extract_errors() - counted == scraper.scrapes - scrapes
        assert endpoint.healthy and endpoint.metrics.running_requests_size == 3
        assert endpoint.metrics.waiting_queue_size == 0 and scraper.failures == 0
        server.page = 'vllm:num_requests_waiting{model_name="m"} NaN\n'
        counted = extract_errors()
        await until(lambda: scraper.failures >= 2)
        assert extract_errors() - counted >= 2
        poll = metrics.registry.get_sample_value(
            "llm_d_epp_datalayer_poll_errors_total", {"source_type": "metrics-data-source"}
        )
        assert poll == 0.0
    finally:
        await scraper.stop()
