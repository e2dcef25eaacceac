"""Property: whatever Envoy's ext_proc messages are, in whatever order, and however a stream ends
(its messages run out, the client cancels, the handler fails), once every stream has ended every
endpoint is back to zero in-flight requests and tokens. Drives the real servicer, several
streams at once, with the real director and scheduler; no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

import grpc
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.config.build import build_components, build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.extproc import server
from epp.extproc.pb import BodyMode, core, ext_proc
from epp.extproc.server import ExternalProcessor
from epp.extproc.stream import StreamOptions
from epp.framework import PluginContext
from epp.requestcontrol import Director
from tests.unit.deep_json import deep_body
from tests.unit.flowcontrol.flow_helpers import flow_control_config

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
# Request bodies with the path they are meant for (sometimes sent to another path).
REQUESTS = [
    (COMPLETIONS, orjson.dumps({"model": "m", "prompt": "hello world", "max_tokens": 5})),
    (CHAT, orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})),
    (COMPLETIONS, orjson.dumps({"model": "m", "prompt": "x" * 300})),
    (COMPLETIONS, orjson.dumps({"model": "nobody-serves-this", "prompt": "x"})),
    (COMPLETIONS, b'{"model":"m","prompt":"hi","extra":' + b"[" * 300 + b"]" * 300 + b"}"),
    (CHAT, deep_body(0, 300)),
    (COMPLETIONS, b"{not json"),
    (COMPLETIONS, b""),
]
BODIES = [body for _, body in REQUESTS]
RESPONSE_BODIES = [
    b'data: {"choices":[{"text":"hi"}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n',
    b"data: [DONE]\n\n",
    b'{"model":"m-v2","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}',
    b"\xff garbage",
]
MODES = [BodyMode.FULL_DUPLEX_STREAMED, BodyMode.BUFFERED, BodyMode.BUFFERED, BodyMode.STREAMED]


def header_map(pairs: dict[str, str]) -> core.HeaderMap:
    return core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()])


def request_headers(
    end_of_stream: bool | None = None, path: str | None = None
) -> st.SearchStrategy[ext_proc.ProcessingRequest]:
    paths = [COMPLETIONS, COMPLETIONS, CHAT, "/v1/models", "/metrics"]
    return st.builds(
        lambda path, method, rewrite, eos: ext_proc.ProcessingRequest(
            request_headers=ext_proc.HttpHeaders(
                headers=header_map(
                    {
                        ":path": path,
                        ":method": method,
                        "content-type": "application/json",
                        **({"x-gateway-model-name-rewrite": "m-v2"} if rewrite else {}),
                    }
                ),
                end_of_stream=eos,
            )
        ),
        st.sampled_from(paths) if path is None else st.just(path),
        st.sampled_from(["POST", "POST", "GET"]),
        st.booleans(),
        st.booleans() if end_of_stream is None else st.just(end_of_stream),
    )


STATUSES = ("200", "200", "503", "500", "x")


def response_headers(statuses: tuple[str, ...] = STATUSES) -> st.SearchStrategy[ext_proc.ProcessingRequest]:
    return st.builds(
        lambda status, content_type, eos: ext_proc.ProcessingRequest(
            response_headers=ext_proc.HttpHeaders(
                headers=header_map({":status": status, "content-type": content_type}), end_of_stream=eos
            )
        ),
        st.sampled_from(statuses),
        st.sampled_from(["application/json", "text/event-stream"]),
        st.booleans(),
    )


def body_message(field: str, data: bytes, end_of_stream: bool) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(**{field: ext_proc.HttpBody(body=data, end_of_stream=end_of_stream)})


@st.composite
def split_body(
    draw: st.DrawFn, field: str, bodies: list[bytes], data: bytes | None = None
) -> list[ext_proc.ProcessingRequest]:
    """A body in 1-3 consecutive pieces, the last one ending it (or, sometimes, not)."""
    data = draw(st.sampled_from(bodies)) if data is None else data
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=2)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    last = draw(st.booleans()) or draw(st.booleans())  # ends the body 3 times in 4
    return [body_message(field, piece, last and i == len(pieces) - 1) for i, piece in enumerate(pieces)]


TRAILERS = {
    "request_trailers": ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers()),
    "response_trailers": ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers()),
}
ANY_MESSAGE = st.one_of(
    request_headers(),
    split_body("request_body", BODIES).map(lambda pieces: pieces[0]),
    st.just(TRAILERS["request_trailers"]),
    response_headers(),
    split_body("response_body", RESPONSE_BODIES).map(lambda pieces: pieces[0]),
    st.just(TRAILERS["response_trailers"]),
)


@st.composite
def envoy_order(draw: st.DrawFn, statuses: tuple[str, ...] = STATUSES) -> list[ext_proc.ProcessingRequest]:
    """A request and its response in the order Envoy sends them."""
    path, data = draw(st.sampled_from(REQUESTS))
    path = path if draw(st.integers(0, 9)) else None
    messages = [
        draw(request_headers(end_of_stream=False, path=path)),
        *draw(split_body("request_body", BODIES, data)),
    ]
    if draw(st.booleans()):
        messages.append(TRAILERS["request_trailers"])
    messages.append(draw(response_headers(statuses)))
    messages += draw(split_body("response_body", RESPONSE_BODIES))
    if draw(st.booleans()):
        messages.append(TRAILERS["response_trailers"])
    return messages


@st.composite
def mutated(draw: st.DrawFn, messages: list[ext_proc.ProcessingRequest]) -> list[ext_proc.ProcessingRequest]:
    """One to three edits: a message repeated, two swapped, one dropped or a random one inserted."""
    messages = list(messages)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(messages) - 1))
        edit = draw(st.sampled_from(["repeat", "swap", "drop", "insert"]))
        if edit == "repeat":
            messages.insert(draw(st.integers(i, len(messages))), messages[i])
        elif edit == "swap":
            j = draw(st.integers(0, len(messages) - 1))
            messages[i], messages[j] = messages[j], messages[i]
        elif edit == "drop" and len(messages) > 1:
            del messages[i]
        elif edit == "insert":
            messages.insert(i, draw(ANY_MESSAGE))
    return messages


@dataclass
class Script:
    messages: list[ext_proc.ProcessingRequest]
    # "runs out": the client half-closes; "cancelled": the call is cancelled once every message is
    # read; "reset": cancelled `reset_after` event-loop steps in, wherever the stream is then
    # (waiting in flow control's queue, between two messages)
    ending: str
    reset_after: int = 0


@st.composite
def scripts(draw: st.DrawFn, orderly: bool = False) -> Script:
    """A stream's messages and how it ends; `orderly`: a whole exchange in Envoy's order, never
    answered 503 (which suspends the endpoint for 10 s: with one endpoint, flow control then sees
    an empty pool and holds what it queued, as GIE's does, past the test's bound)."""
    if orderly:
        messages = draw(envoy_order(tuple(s for s in STATUSES if s != "503")))
    else:
        base = draw(st.one_of(envoy_order(), st.lists(ANY_MESSAGE, min_size=1, max_size=10)))
        messages = draw(mutated(base)) if draw(st.booleans()) else base
        if draw(st.booleans()):
            messages = messages[: draw(st.integers(1, len(messages)))]  # the stream may end anywhere
    # Envoy sends the protocol config with the first message.
    first = ext_proc.ProcessingRequest()
    first.CopyFrom(messages[0])
    mode = draw(st.sampled_from(MODES))
    first.protocol_config.CopyFrom(
        ext_proc.ProtocolConfiguration(request_body_mode=mode, response_body_mode=mode)
    )
    ending = draw(st.sampled_from(["runs out", "cancelled", "reset"]))
    return Script([first, *messages[1:]], ending, draw(st.integers(0, 40)) if ending == "reset" else 0)


DEFAULT_CONFIG = load_config(None)  # parsed once (60% of a director's making); built per example
# Flow control on, and a pool saturated by one request in flight (one endpoint, maxConcurrency 1):
# with up to four streams at once, some wait in its queue and end there (run out, cancelled) or
# once dispatched.
FLOW_CONTROL_CONFIG = load_config(flow_control_config({}))


def make_director(flow_control: bool = False) -> Director:
    datastore = Datastore()
    datastore.synced = True
    pool = [("m", "m-v2")] if flow_control else [("m", "m-v2"), ("m",), ("m-v2",)]
    for i, models in enumerate(pool):
        datastore.upsert(
            EndpointSpec(
                name=f"e{i}",
                address="10.0.0.1",
                port=8000 + i,
                models=frozenset(models),
                labels=MappingProxyType({}),
            )
        )
    if flow_control:
        return build_director(FLOW_CONTROL_CONFIG, datastore, PluginContext())[0]
    scheduler = build_components(DEFAULT_CONFIG, PluginContext()).scheduler
    return Director(datastore, scheduler)


@pytest.fixture(autouse=True, scope="module")
def no_wait_for_a_reset() -> Iterator[None]:
    """No script resets its stream after the last reply as Envoy does, so none need wait for it
    (tests/unit/extproc/test_stream_end.py covers the wait): 400 examples would wait 40 s."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server, "GATEWAY_CLOSE_WAIT", 0.0)
        yield


class NoDeadline:
    """What the servicer uses of grpc.aio's call context: the call's time remaining (None: no
    deadline; a bare None made every stream fail at its first message with a 500, before any
    routing: the property held without a request ever taking load), and its replies' sends."""

    def time_remaining(self) -> float | None:
        return None

    async def write(self, reply: ext_proc.ProcessingResponse) -> None:
        await asyncio.sleep(0)  # let the other streams interleave


async def run_stream(processor: ExternalProcessor, script: Script) -> None:
    sent_all = asyncio.Event()
    reset = asyncio.Event()

    async def requests() -> AsyncIterator[ext_proc.ProcessingRequest]:
        for message in script.messages:
            yield message
            await asyncio.sleep(0)  # let the other streams interleave
        sent_all.set()
        if script.ending != "runs out":
            await reset.wait()  # the client neither sends more nor half-closes; a reset ends reads

    context = cast(grpc.aio.ServicerContext, NoDeadline())
    task = asyncio.create_task(processor.Process(requests(), context))

    async def end(task: asyncio.Task[None], *others: asyncio.Task[Any]) -> None:
        """As grpc.aio on the client's reset: the handler cancelled (a no-op when the stream had
        ended), and a read left in flight ended."""
        for each in (task, *others):
            each.cancel()
        reset.set()
        await asyncio.gather(task, *others, return_exceptions=True)

    if script.ending == "runs out":
        await task
        return
    if script.ending == "reset":
        for _ in range(script.reset_after):
            await asyncio.sleep(0)
        await end(task)
        return
    waiter = asyncio.create_task(sent_all.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    await end(task, waiter)


async def run_all(scripts: list[Script], flow_control: bool = False) -> Director:
    director = make_director(flow_control)
    processor = ExternalProcessor(director, StreamOptions(max_body_bytes=100_000))
    try:
        await asyncio.wait_for(asyncio.gather(*(run_stream(processor, s) for s in scripts)), timeout=10)
    finally:
        if director.flow_control is not None:
            await director.flow_control.stop()
    return director


def assert_no_load(director: Director) -> None:
    load = {e.name: (e.inflight_requests, e.inflight_tokens) for e in director.datastore.endpoints()}
    assert load == {name: (0, 0) for name in load}


# No per-example deadline: the first example builds the first director (plugin modules imported
# then), which took 7-10 s on a loaded 2-core machine and failed as FlakyFailure; a hang is still
# caught by run_all's bound on the streams.
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(scripts(), min_size=1, max_size=4))
def test_every_ended_stream_leaves_no_in_flight_load(streams: list[Script]) -> None:
    assert_no_load(asyncio.run(run_all(streams)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(scripts(orderly=True), min_size=2, max_size=4))
def test_with_flow_control_every_ended_stream_leaves_no_queue_and_no_load(streams: list[Script]) -> None:
    director = asyncio.run(run_all(streams, flow_control=True))
    assert_no_load(director)
    assert director.flow_control is not None
    assert (director.flow_control.length, director.flow_control.bytes) == (0, 0)
