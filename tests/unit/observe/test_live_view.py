"""The metrics port's JSON API, event stream and web view, over a real aiohttp server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from importlib import resources

import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout, TCPConnector
from prometheus_client import CollectorRegistry

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.explain import DecisionRecorder, RecordOptions
from epp.framework import PluginContext
from epp.metrics.http import MetricsServer
from epp.observe import LiveView, prefix_indexes
from epp.observe.view import MAX_STREAMS
from epp.requestcontrol import Director
from tests.unit.discovery.conftest import until


class Served:
    def __init__(self, director: Director, view: LiveView, server: MetricsServer) -> None:
        self.director = director
        self.view = view
        self.url = f"http://127.0.0.1:{server.port}"

    def route(self, request_id: str, prompt: str = "hello " * 40) -> None:
        body = orjson.dumps({"model": "m", "prompt": prompt})
        self.director.handle_body(body, {":path": "/v1/completions", "x-request-id": request_id}, None)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    datastore = Datastore()
    for i in range(3):
        endpoint = datastore.upsert(EndpointSpec(name=f"pod-{i}", address="10.0.0.1", port=8000 + i))
        endpoint.metrics.waiting_queue_size = i
        endpoint.metrics.kv_cache_usage = 0.25 * i
        endpoint.metrics.active_models = frozenset({"lora-a"} if i == 1 else ())
    datastore.get("pod-2").healthy = False  # type: ignore[union-attr]
    director, components = build_director(load_config(), datastore, PluginContext())
    recorder = DecisionRecorder(RecordOptions(capacity=100))
    director.recorder = recorder
    view = LiveView(datastore, recorder, "pool-a", prefix_indexes(components.plugins))
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, view.routes(), view.on_shutdown)
    await server.start()
    try:
        yield Served(director, view, server)
    finally:
        await asyncio.wait_for(server.stop(), 10)


async def get_json(url: str) -> tuple[int, dict]:
    async with ClientSession(timeout=ClientTimeout(total=5)) as session, session.get(url) as response:
        return response.status, await response.json()


async def test_endpoints_show_live_state_and_prefix_share(served: Served) -> None:
    served.route("r1")
    status, data = await get_json(served.url + "/api/endpoints")
    assert status == 200 and data["pool"] == "pool-a"
    rows = {e["name"]: e for e in data["endpoints"]}
    assert rows["pod-1"]["waiting"] == 1 and rows["pod-1"]["kv_cache"] == 0.25
    assert rows["pod-1"]["lora_active"] == ["lora-a"]
    assert rows["pod-2"]["health"] == "unreachable" and not rows["pod-2"]["ready"]
    chosen = served.director.recorder.by_request_id("r1")[0].destination_name  # type: ignore[union-attr]
    assert chosen is not None
    assert rows[chosen]["prefix_share"] == 1.0 and rows[chosen]["prefix_blocks"] > 0
    assert data["records"]["kept"] == 1


async def test_decisions_recent_by_id_and_by_endpoint(served: Served) -> None:
    for i in range(4):
        served.route(f"r{i}")
    _, data = await get_json(served.url + "/api/decisions?limit=2")
    assert [d["request_id"] for d in data["decisions"]] == ["r3", "r2"]
    status, data = await get_json(served.url + "/api/decisions/r1")
    assert status == 200 and data["decisions"][0]["profiles"][0]["endpoints"]
    status, _ = await get_json(served.url + "/api/decisions/nope")
    assert status == 404
    status, _ = await get_json(served.url + "/api/decisions?limit=x")
    assert status == 400
    _, data = await get_json(served.url + "/api/decisions?endpoint=pod-2")
    assert data["decisions"] == []  # unreachable: never a candidate


@pytest.mark.parametrize(
    "limit", ["0", "-3", "2_0", "%D9%A5", "+2", ""], ids=["0", "-3", "2_0", "arabic 5", "+2", "empty"]
)
async def test_a_limit_that_is_not_a_count_of_records_is_a_400(served: Served, limit: str) -> None:
    """`limit=0` and negative limits answered one record, and int() read `2_0` as 20 and
    Arabic-Indic digits as a number: only 1 to 1000 in ASCII digits (more is capped) is a limit."""
    served.route("r0")
    status, data = await get_json(served.url + f"/api/decisions?limit={limit}")
    assert (status, data) == (
        400,
        {"error": "limit must be a whole number of records from 1 (at most 1000 are sent)"},
    )
    for capped in ("99999999999999999999999", "1" * 5000, "0001"):  # int() refuses 5,000 digits
        status, data = await get_json(served.url + f"/api/decisions?limit={capped}")
        assert status == 200 and len(data["decisions"]) == 1


async def test_the_event_stream_sends_endpoints_then_each_new_decision(served: Served) -> None:
    async with (
        ClientSession(timeout=ClientTimeout(total=10)) as session,
        session.get(served.url + "/api/events") as response,
    ):
        assert response.headers["Content-Type"] == "text/event-stream"
        seen: list[tuple[str, dict]] = []
        event = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                seen.append((event, orjson.loads(line[6:])))
                if event == "endpoints" and len(seen) == 1:
                    served.route("live-1")
                if event == "decision":
                    break
    assert seen[0][0] == "endpoints" and len(seen[0][1]["endpoints"]) == 3
    assert seen[-1][1]["request_id"] == "live-1"


async def test_the_page_and_its_assets_are_served_and_need_nothing_from_the_internet(served: Served) -> None:
    async with ClientSession(timeout=ClientTimeout(total=5)) as session:
        async with session.get(served.url + "/", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/ui/"
        for path, kind in (
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ):
            async with session.get(served.url + path) as response:
                assert response.status == 200 and response.content_type == kind
        async with session.get(served.url + "/ui/../serve.py") as response:
            assert response.status == 404
    for name in ("index.html", "app.js", "app.css"):
        text = resources.files("epp.observe").joinpath("static", name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), name


async def test_an_open_event_stream_does_not_hold_up_shutdown(served: Served) -> None:
    session = ClientSession(timeout=ClientTimeout(total=10))
    response = await session.get(served.url + "/api/events")
    await response.content.readline()
    # The fixture's stop (bounded by wait_for) must return although this stream is open.
    await served.view.on_shutdown(None)  # type: ignore[arg-type]
    await asyncio.wait_for(response.read(), 5)
    response.release()
    await session.close()


async def first_endpoints_event(session: ClientSession, url: str) -> None:
    """Open an event stream and read until its first `endpoints` event (kept open after)."""
    response = await session.get(url + "/api/events")
    async for raw in response.content:
        if raw.startswith(b"event: endpoints"):
            return


async def test_event_streams_share_one_endpoints_snapshot(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many viewers cost the loop one snapshot of the pool per period, not one each: building it
    takes milliseconds for a large pool, on the loop that serves ext_proc."""
    builds = 0
    build = served.view.endpoints_json

    def counted() -> dict:
        nonlocal builds
        builds += 1
        return build()

    monkeypatch.setattr(served.view, "endpoints_json", counted)
    async with ClientSession(timeout=ClientTimeout(total=10)) as session:
        await asyncio.gather(*(first_endpoints_event(session, served.url) for _ in range(20)))
        assert builds <= 2  # one, or two if the streams straddle the reuse window
        await served.view.on_shutdown(None)  # type: ignore[arg-type]


async def test_event_streams_beyond_the_cap_get_503(served: Served) -> None:
    """Subscribers are bounded (each holds a socket's buffers when it does not read), so one past
    MAX_STREAMS is refused with a reason; once one closes, a new one is accepted."""
    unlimited = TCPConnector(limit=0)
    async with ClientSession(timeout=ClientTimeout(total=10), connector=unlimited) as session:
        opened = [await session.get(served.url + "/api/events") for _ in range(MAX_STREAMS)]
        await until(lambda: len(served.view._streams) == MAX_STREAMS, "every stream registered")
        async with session.get(served.url + "/api/events") as refused:
            assert refused.status == 503
            assert (await refused.json())["error"] == (
                f"too many open event streams ({MAX_STREAMS}); poll /api/endpoints instead"
            )
        opened.pop().close()
        await until(lambda: len(served.view._streams) < MAX_STREAMS, "the closed stream to go")
        async with session.get(served.url + "/api/events") as accepted:
            assert accepted.status == 200
        await served.view.on_shutdown(None)  # type: ignore[arg-type]
        for response in opened:
            response.close()
