"""The ext_proc state machine, driven with real ProcessingRequest protobufs over a real gRPC channel."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType

import grpc
import orjson
import pytest
from google.protobuf import json_format, struct_pb2

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.datastore.endpoint import ANY_MODEL_GROUP, NO_FALLBACK_GROUP, EndpointMetrics
from epp.extproc.messages import BODY_CHUNK_BYTES
from epp.extproc.pb import BodyMode, core, ext_proc, ext_proc_grpc
from epp.extproc.server import Health, bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.framework import Plugin, PluginContext
from epp.plugins.previous_response_affinity_filter import response_key
from epp.requestcontrol import Director, RequestControlHooks, ResponseStreaming
from epp.requests import InferenceRequest
from epp.scheduling.types import SchedulingResult
from tests.unit.deep_json import DEEP_FIELDS, deep_body
from tests.unit.plugins.test_plugins_previous_response_affinity_filter import replica

FDS = BodyMode.FULL_DUPLEX_STREAMED

# Fewest in-flight requests wins, random among ties; plus session affinity for the response header.
LEAST_LOADED = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: active-request-scorer
- type: session-affinity-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: active-request-scorer
  - pluginRef: session-affinity-scorer
    weight: 0.5
"""


class Harness:
    def __init__(self, director: Director, stub: ext_proc_grpc.ExternalProcessorStub) -> None:
        self.director = director
        self.datastore = director.datastore
        self.stub = stub

    def open(self) -> grpc.aio.StreamStreamCall:
        return self.stub.Process()

    def add(self, name: str, port: int, models: tuple[str, ...] = ("m",), address: str = "10.0.0.1") -> None:
        self.datastore.upsert(
            EndpointSpec(
                name=name, address=address, port=port, models=frozenset(models), labels=MappingProxyType({})
            )
        )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    datastore = Datastore()
    datastore.synced = True
    director, _ = build_director(load_config(LEAST_LOADED), datastore, PluginContext())
    server = ext_proc_server(director, StreamOptions(max_body_bytes=200_000), Health(lambda: True))
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Harness(director, ext_proc_grpc.ExternalProcessorStub(channel))
    await channel.close()
    await server.stop(0)


def headers_msg(
    path: str = "/v1/completions",
    method: str = "POST",
    end_of_stream: bool = False,
    extra: dict[str, str] | None = None,
    mode: int = FDS,
) -> ext_proc.ProcessingRequest:
    pairs = {":path": path, ":method": method, "content-type": "application/json", **(extra or {})}
    return ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=core.HeaderMap(
                headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
            ),
            end_of_stream=end_of_stream,
        ),
        protocol_config=ext_proc.ProtocolConfiguration(request_body_mode=mode, response_body_mode=mode),
    )


def body_msg(body: bytes, end_of_stream: bool = True) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=end_of_stream))


def set_headers(common: ext_proc.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def lb_metadata(reply: ext_proc.ProcessingResponse) -> dict[str, object]:
    return json_format.MessageToDict(reply.dynamic_metadata)


def group(harness: Harness, name: str) -> str:
    """The endpoint's fallback group, which the EPP sets beside the destination."""
    endpoint = harness.datastore.get(name)
    assert endpoint is not None
    return endpoint.fallback_group


COMPLETION = orjson.dumps({"model": "m", "prompt": "hello world", "max_tokens": 5})


async def read(call: grpc.aio.StreamStreamCall) -> ext_proc.ProcessingResponse:
    return await asyncio.wait_for(call.read(), timeout=5)


async def test_full_duplex_routes_after_the_whole_body(harness: Harness) -> None:
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(extra={"x-request-id": "r1"}))
    await call.write(body_msg(COMPLETION[:10], end_of_stream=False))
    await call.write(body_msg(COMPLETION[10:], end_of_stream=True))
    first = await read(call)
    assert first.WhichOneof("response") == "request_headers"
    common = first.request_headers.response
    assert common.clear_route_cache
    assert set_headers(common)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert lb_metadata(first) == {
        "envoy.lb": {
            "x-gateway-destination-endpoint": "10.0.0.1:8000",
            "x-epp-fallback-group": group(harness, "a"),
        }
    }
    second = await read(call)
    streamed = second.request_body.response.body_mutation.streamed_response
    assert streamed.body == COMPLETION and streamed.end_of_stream
    endpoint = harness.datastore.get("a")
    assert endpoint is not None and endpoint.inflight_requests == 1
    await call.done_writing()
    await call.wait_for_connection()
    await until(lambda: endpoint.inflight_requests == 0)


async def test_large_body_is_echoed_in_chunks_under_envoys_limit(harness: Harness) -> None:
    harness.add("a", 8000)
    body = orjson.dumps({"model": "m", "prompt": "x" * 150_000})
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(body))
    assert (await read(call)).WhichOneof("response") == "request_headers"
    echoed, flags = b"", []
    while not flags or not flags[-1]:
        part = (await read(call)).request_body.response.body_mutation.streamed_response
        assert len(part.body) <= BODY_CHUNK_BYTES
        echoed += part.body
        flags.append(part.end_of_stream)
    assert echoed == body and len(flags) == 3


async def test_buffered_mode_answers_headers_at_once_and_routes_on_the_body(harness: Harness) -> None:
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(mode=BodyMode.BUFFERED))
    first = await read(call)
    assert first.WhichOneof("response") == "request_headers"
    assert not first.request_headers.response.header_mutation.set_headers
    await call.write(body_msg(COMPLETION))
    second = await read(call)
    assert second.WhichOneof("response") == "request_body"
    assert set_headers(second.request_body.response)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert not second.request_body.response.HasField("body_mutation")
    assert lb_metadata(second)["envoy.lb"] == {
        "x-gateway-destination-endpoint": "10.0.0.1:8000",
        "x-epp-fallback-group": group(harness, "a"),
    }


async def test_bodyless_request_is_routed_on_its_headers(harness: Harness) -> None:
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(path="/v1/models", method="GET", end_of_stream=True))
    reply = await read(call)
    headers = set_headers(reply.request_headers.response)
    assert headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert headers["x-request-id"]  # generated because the client sent none


async def test_a_bodyless_post_to_an_inference_api_is_a_400(harness: Harness) -> None:
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(path="/v1/chat/completions", method="POST", end_of_stream=True))
    reply = (await read(call)).immediate_response
    assert reply.status.code == 400
    assert orjson.loads(reply.body)["error"]["message"].endswith("the body is empty")
    assert error_count(harness.director, "BadRequest") == 1


async def test_client_sent_owned_headers_are_overwritten_or_removed(harness: Harness) -> None:
    harness.add("a", 8000)
    call = harness.open()
    forged = {"x-gateway-destination-endpoint": "127.0.0.1:9901", "x-prefiller-host-port": "evil:1"}
    await call.write(headers_msg(extra=forged))
    await call.write(body_msg(COMPLETION))
    mutation = (await read(call)).request_headers.response.header_mutation
    assert {h.header.key: h.header.raw_value for h in mutation.set_headers}[
        "x-gateway-destination-endpoint"
    ] == b"10.0.0.1:8000"
    overwrite = core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert all(h.append_action == overwrite for h in mutation.set_headers)
    assert list(mutation.remove_headers) == ["x-prefiller-host-port"]


async def error_reply(
    harness: Harness, body: bytes, path: str = "/v1/completions"
) -> tuple[int, dict[str, object]]:
    call = harness.open()
    await call.write(headers_msg(path=path))
    await call.write(body_msg(body))
    reply = await read(call)
    assert reply.WhichOneof("response") == "immediate_response"
    immediate = reply.immediate_response
    content_type = {h.header.key: h.header.raw_value for h in immediate.headers.set_headers}["content-type"]
    assert content_type == b"application/json"
    return immediate.status.code, orjson.loads(immediate.body)["error"]


@pytest.mark.parametrize(
    ("body", "path", "status", "message"),
    [
        (
            b"{not json",
            "/v1/completions",
            400,
            "inference error: BadRequest - error unmarshaling request body",
        ),
        (b"[1,2]", "/v1/completions", 400, "the body must be a JSON object"),
        (b'{"prompt":"x"}', "/v1/completions", 400, "model not found in request body"),
        (b'{"model":7,"prompt":"x"}', "/v1/completions", 400, "model not found in request body"),
        (b'{"model":"m"}', "/v1/completions", 400, "invalid completions request: must have prompt field"),
        (
            b'{"model":"m","prompt":""}',
            "/v1/completions",
            400,
            "completions request: prompt is an empty string",
        ),
        (
            b'{"model":"m","prompt":[]}',
            "/v1/completions",
            400,
            "completions request: prompt is an empty list",
        ),
        (b'{"model":"m","messages":[]}', "/v1/chat/completions", 400, "must have valid messages field"),
        (b'{"model":"m","prompt":"x","stream":"yes"}', "/v1/completions", 400, "stream must be a boolean"),
        (b'{"model":"m","prompt":"x","max_tokens":"9"}', "/v1/completions", 400, "max_tokens must be"),
        (b'{"model":"other","prompt":"x"}', "/v1/completions", 404, "model 'other' is not served"),
    ],
)
async def test_bad_requests_get_json_errors(
    harness: Harness, body: bytes, path: str, status: int, message: str
) -> None:
    harness.add("a", 8000)
    code, error = await error_reply(harness, body, path)
    assert code == status
    assert message in str(error["message"])
    assert error["code"] == status


async def test_oversized_body_gets_413_before_it_ends(harness: Harness) -> None:
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(b"x" * 200_001, end_of_stream=False))
    reply = await read(call)
    assert reply.immediate_response.status.code == 413
    assert b"exceeds the limit of 200000 bytes" in reply.immediate_response.body


async def test_no_endpoints_gets_503(harness: Harness) -> None:
    code, error = await error_reply(harness, COMPLETION)
    assert code == 503
    assert "failed to find endpoint candidates" in str(error["message"])


def subset_metadata(hostports: list[str]) -> core.Metadata:
    value = struct_pb2.Struct()
    value.update({"x-gateway-destination-endpoint-subset": hostports})
    return core.Metadata(filter_metadata={"envoy.lb.subset_hint": value})


@pytest.mark.parametrize("hint", ["10.0.0.2:8000", "[::ffff:10.0.0.2]:8000", "::ffff:a00:2"])
async def test_subset_hint_narrows_candidates_and_an_empty_one_gets_503(harness: Harness, hint: str) -> None:
    """A hint naming the pod by its IPv4-mapped address names the pod (it narrowed to none: 503)."""
    harness.add("a", 8000, address="10.0.0.1")
    harness.add("b", 8000, address="10.0.0.2")
    for _ in range(4):
        call = harness.open()
        await call.write(headers_msg())
        message = body_msg(COMPLETION)
        message.metadata_context.CopyFrom(subset_metadata([hint]))
        await call.write(message)
        reply = await read(call)
        assert (
            set_headers(reply.request_headers.response)["x-gateway-destination-endpoint"] == "10.0.0.2:8000"
        )
        await call.done_writing()
    call = harness.open()
    await call.write(headers_msg())
    message = body_msg(COMPLETION)
    message.metadata_context.CopyFrom(subset_metadata([]))
    await call.write(message)
    assert (await read(call)).immediate_response.status.code == 503


def response_headers_msg(
    content_type: str, status: str = "200", extra: dict[str, str] | None = None
) -> ext_proc.ProcessingRequest:
    pairs = {":status": status, "content-type": content_type, **(extra or {})}
    return ext_proc.ProcessingRequest(
        response_headers=ext_proc.HttpHeaders(
            headers=core.HeaderMap(
                headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
            )
        )
    )


def response_body_msg(body: bytes, end_of_stream: bool) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=body, end_of_stream=end_of_stream))


SSE = [
    b'data: {"object":"text_completion","choices":[{"text":"hi"}]}\n\n',
    b'data: {"object":"text_completion","choices":[],"usage":{"prompt_tokens":3,',
    b'"completion_tokens":1,"total_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}}\n\n',
    b"data: [DONE]\n\n",
]


async def streaming_request(harness: Harness) -> tuple[grpc.aio.StreamStreamCall, Endpoint]:
    """A streaming request routed to the only endpoint, its SSE response headers answered."""
    harness.add("a", 8000)
    endpoint = harness.datastore.get("a")
    assert endpoint is not None
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(orjson.dumps({"model": "m", "prompt": "hi", "stream": True})))
    await read(call)
    await read(call)
    assert endpoint.inflight_requests == 1
    await call.write(response_headers_msg("text/event-stream"))
    assert (await read(call)).WhichOneof("response") == "response_headers"
    return call, endpoint


async def test_streamed_response_is_echoed_unchanged_and_releases_the_endpoint(harness: Harness) -> None:
    call, endpoint = await streaming_request(harness)
    for i, chunk in enumerate(SSE):
        await call.write(response_body_msg(chunk, end_of_stream=i == len(SSE) - 1))
        echoed = (await read(call)).response_body.response.body_mutation.streamed_response
        assert echoed.body == chunk
        assert echoed.end_of_stream == (i == len(SSE) - 1)
    assert endpoint.inflight_requests == 0
    assert endpoint.inflight_tokens == 0


async def test_client_disconnect_mid_stream_releases_the_endpoint(harness: Harness) -> None:
    call, endpoint = await streaming_request(harness)
    await call.write(response_body_msg(SSE[0], end_of_stream=False))
    await read(call)
    assert endpoint.inflight_requests == 1
    call.cancel()
    for _ in range(200):
        if endpoint.inflight_requests == 0:
            break
        await asyncio.sleep(0.01)
    assert endpoint.inflight_requests == 0


async def test_least_loaded_spreads_concurrent_requests(harness: Harness) -> None:
    for i in range(3):
        harness.add(f"e{i}", 8000 + i)
    calls = []
    chosen = []
    for _ in range(3):
        call = harness.open()
        await call.write(headers_msg())
        await call.write(body_msg(COMPLETION))
        chosen.append(
            set_headers((await read(call)).request_headers.response)["x-gateway-destination-endpoint"]
        )
        await read(call)
        calls.append(call)
    assert sorted(chosen) == ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.1:8002"]


async def test_model_rewrite_header_rewrites_upstream_and_restores_the_response(harness: Harness) -> None:
    harness.add("a", 8000, models=("m", "m-v2"))
    call = harness.open()
    await call.write(headers_msg(extra={"x-gateway-model-name-rewrite": "m-v2"}))
    await call.write(body_msg(orjson.dumps({"model": "m", "prompt": "hi"})))
    headers_reply = await read(call)
    upstream = (await read(call)).request_body.response.body_mutation.streamed_response.body
    assert orjson.loads(upstream) == {"model": "m-v2", "prompt": "hi"}
    assert set_headers(headers_reply.request_headers.response)["content-length"] == str(len(upstream))
    await call.write(response_headers_msg("application/json"))
    await read(call)
    await call.write(response_body_msg(b'{"model":"m-v2","choices":[]}', end_of_stream=True))
    restored = (await read(call)).response_body.response.body_mutation.streamed_response.body
    assert restored == b'{"model":"m","choices":[]}'


async def whole_response_request(
    harness: Harness,
) -> tuple[grpc.aio.StreamStreamCall, ext_proc.ProcessingResponse]:
    """A completion routed to the only endpoint, its JSON response headers sent: the call and
    the reply to those headers."""
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(COMPLETION))
    await read(call)
    await read(call)
    await call.write(response_headers_msg("application/json"))
    return call, await read(call)


async def test_scheduler_response_headers_reach_the_client(harness: Harness) -> None:
    reply = (await whole_response_request(harness))[1].response_headers.response
    token = set_headers(reply)["x-session-token"]
    assert base64.b64decode(token) == b"default/a"


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_streamed_request_bodies_are_refused_with_a_clear_500(harness: Harness) -> None:
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(mode=BodyMode.STREAMED))
    reply = (await read(call)).immediate_response
    assert reply.status.code == 500
    assert b"ext_proc mode STREAMED" in reply.body and b"FULL_DUPLEX_STREAMED or BUFFERED" in reply.body


def trailers_msg() -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers())


async def test_buffered_body_followed_by_trailers_is_routed_and_the_trailers_answered(
    harness: Harness,
) -> None:
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(mode=BodyMode.BUFFERED))
    await read(call)
    await call.write(body_msg(COMPLETION, end_of_stream=False))
    routed = await read(call)
    assert set_headers(routed.request_body.response)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    await call.write(trailers_msg())
    assert (await read(call)).WhichOneof("response") == "request_trailers"


async def test_full_duplex_body_ended_by_trailers_is_sent_once_in_a_replacing_headers_reply(
    harness: Harness,
) -> None:
    """Streamed body replies and a trailers reply would reach the model server twice through
    Envoy 1.40 with retries (envoyproxy/envoy#45470): the body goes in the headers reply instead,
    CONTINUE_AND_REPLACE, and the trailers get no reply (Envoy would take one as spurious)."""
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(COMPLETION[:7], end_of_stream=False))
    await call.write(body_msg(COMPLETION[7:], end_of_stream=False))
    await call.write(trailers_msg())
    routed = (await read(call)).request_headers.response
    assert routed.status == ext_proc.CommonResponse.CONTINUE_AND_REPLACE
    assert routed.body_mutation.body == COMPLETION
    assert set_headers(routed)["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    await call.write(response_headers_msg("application/json"))
    assert (await read(call)).WhichOneof("response") == "response_headers"


def routed_headers(reply: ext_proc.ProcessingResponse) -> dict[str, str]:
    """The set headers of whichever reply routed (request headers or request body)."""
    kind = reply.WhichOneof("response")
    assert kind in ("request_headers", "request_body"), reply
    return set_headers(getattr(reply, kind).response)


EMPTY_ENDS = {
    "full-duplex, an empty DATA frame": (FDS, [body_msg(b"")]),
    "full-duplex, trailers only": (FDS, [trailers_msg()]),
    "buffered, an empty DATA frame": (BodyMode.BUFFERED, [body_msg(b"")]),
}


@pytest.mark.parametrize("mode, ending", EMPTY_ENDS.values(), ids=list(EMPTY_ENDS))
async def test_a_request_whose_body_is_empty_is_routed_as_a_bodyless_one(
    harness: Harness, mode: int, ending: list[ext_proc.ProcessingRequest]
) -> None:
    """HTTP/2 headers without END_STREAM, then an empty DATA frame or trailers: GET /v1/models
    was parsed as an empty JSON document, a 400 it does not get with END_STREAM on its headers."""
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(path="/v1/models", method="GET", mode=mode))
    if mode == BodyMode.BUFFERED:
        assert (await read(call)).WhichOneof("response") == "request_headers"
    for message in ending:
        await call.write(message)
    assert routed_headers(await read(call))["x-gateway-destination-endpoint"] == "10.0.0.1:8000"


async def test_a_buffered_request_with_no_body_but_trailers_gets_a_400(harness: Harness) -> None:
    """Envoy sends only the trailers: their reply cannot route (no request header mutation, no
    route cache cleared), and a body reply to them would be a protocol error to Envoy (503)."""
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(path="/v1/models", method="GET", mode=BodyMode.BUFFERED))
    assert (await read(call)).WhichOneof("response") == "request_headers"
    await call.write(trailers_msg())
    reply = (await read(call)).immediate_response
    assert reply.status.code == 400
    assert b"cannot end with trailers through this gateway (ext_proc BUFFERED" in reply.body
    await until(lambda: load(harness) == [(0, 0)])


@pytest.mark.parametrize("ending", [body_msg(b""), trailers_msg()], ids=["empty DATA", "trailers"])
async def test_an_empty_post_body_ended_late_gets_the_bodyless_400(
    harness: Harness, ending: ext_proc.ProcessingRequest
) -> None:
    """The same message as a POST that ends at its headers, not a JSON parser's."""
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(path="/v1/chat/completions"))
    await call.write(ending)
    reply = (await read(call)).immediate_response
    assert reply.status.code == 400
    assert orjson.loads(reply.body)["error"]["message"].endswith("the body is empty")


async def test_buffered_response_rewritten_model_carries_its_new_length(harness: Harness) -> None:
    harness.add("a", 8000, models=("m", "m-target"))
    call = harness.open()
    await call.write(headers_msg(mode=BodyMode.BUFFERED, extra={"x-gateway-model-name-rewrite": "m-target"}))
    await read(call)
    await call.write(body_msg(orjson.dumps({"model": "m", "prompt": "hi"})))
    await read(call)
    await call.write(response_headers_msg("application/json"))
    await read(call)
    message = response_body_msg(b'{"model":"m-target","choices":[]}', end_of_stream=True)
    await call.write(message)
    reply = (await read(call)).response_body.response
    assert reply.body_mutation.body == b'{"model":"m","choices":[]}'
    assert set_headers(reply)["content-length"] == str(len(b'{"model":"m","choices":[]}'))


async def test_a_503_from_the_data_plane_suspends_the_endpoint(harness: Harness) -> None:
    harness.add("a", 8000)
    harness.add("b", 8001)
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(COMPLETION))
    chosen = set_headers((await read(call)).request_headers.response)["x-gateway-destination-endpoint"]
    await read(call)
    await call.write(response_headers_msg("text/plain", status="503"))
    await read(call)
    ready = [e.hostport for e in harness.datastore.ready_endpoints()]
    assert chosen not in ready and len(ready) == 1
    for _ in range(3):
        call = harness.open()
        await call.write(headers_msg())
        await call.write(body_msg(COMPLETION))
        assert (
            set_headers((await read(call)).request_headers.response)["x-gateway-destination-endpoint"]
            == ready[0]
        )


@pytest.mark.parametrize("reported_in", ["header", "metadata"])
async def test_the_served_endpoint_carries_the_load_and_the_skipped_one_is_suspended(
    harness: Harness, reported_in: str
) -> None:
    """The gateway retried away from the EPP's pick (refused, reset, 503, no first byte in time)
    and says so in x-gateway-destination-endpoint-served: the load moves to the endpoint serving,
    the one skipped leaves rotation, and the response's end releases the load exactly once."""
    harness.add("a", 8000)
    harness.add("b", 8001)
    call = harness.open()
    await call.write(headers_msg(mode=BodyMode.BUFFERED))
    await read(call)
    await call.write(body_msg(COMPLETION))
    chosen = set_headers((await read(call)).request_body.response)["x-gateway-destination-endpoint"]
    picked, other = (harness.datastore.get(n) for n in ("a", "b"))
    assert picked is not None and other is not None
    if picked.hostport != chosen:
        picked, other = other, picked
    assert (picked.inflight_requests, other.inflight_requests) == (1, 0)
    served = {"x-gateway-destination-endpoint-served": other.hostport}
    if reported_in == "header":  # our bootstrap
        await call.write(response_headers_msg("application/json", extra=served))
    else:  # GIE's protocol (Istio)
        message = response_headers_msg("application/json")
        metadata = struct_pb2.Struct()
        metadata.update(served)
        message.metadata_context.filter_metadata["envoy.lb"].CopyFrom(metadata)
        await call.write(message)
    reply = (await read(call)).response_headers.response
    assert list(reply.header_mutation.remove_headers) == (
        ["x-gateway-destination-endpoint-served"] if reported_in == "header" else []
    )
    assert (picked.inflight_requests, other.inflight_requests) == (0, 1)
    assert [e.hostport for e in harness.datastore.ready_endpoints()] == [other.hostport]
    await call.write(response_body_msg(b"{}", end_of_stream=True))
    await read(call)
    assert (picked.inflight_requests, other.inflight_requests) == (0, 0)


async def test_a_streaming_request_is_marked_in_the_metadata(harness: Harness) -> None:
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(orjson.dumps({"model": "m", "prompt": "hi", "stream": True})))
    assert lb_metadata(await read(call)) == {
        "envoy.lb": {
            "x-gateway-destination-endpoint": "10.0.0.1:8000",
            "x-epp-fallback-group": group(harness, "a"),
            "x-epp-streaming": "true",
        }
    }


async def test_an_adapter_served_only_as_it_runs_now_gets_no_fallback_group(harness: Harness) -> None:
    """`a` serves `lora-1` because it runs it now (its metrics), not because its model list names
    it: `b`, of the same listed models, need not have it loaded, so the request's retries past
    the EPP's list have no group to go to (Envoy's 503, not `b`'s 404 for an unknown model)."""
    harness.add("a", 8000)
    harness.add("b", 8001)
    a = harness.datastore.get("a")
    assert a is not None
    a.metrics = EndpointMetrics(active_models=frozenset({"lora-1"}))
    for model, expected in (("lora-1", NO_FALLBACK_GROUP), ("m", a.fallback_group)):
        call = harness.open()
        await call.write(headers_msg())
        await call.write(body_msg(orjson.dumps({"model": model, "prompt": "hi"})))
        lb = lb_metadata(await read(call))["envoy.lb"]
        assert isinstance(lb, dict)
        if model == "lora-1":  # only `a` runs it
            assert lb["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        assert lb["x-epp-fallback-group"] == expected, model  # `a` and `b` share theirs
        call.cancel()
    assert NO_FALLBACK_GROUP not in {a.fallback_group, ANY_MODEL_GROUP}


def error_count(director: Director, code: str) -> float:
    value = director.metrics.registry.get_sample_value(
        "inference_objective_request_error_total",
        {"model_name": "", "target_model_name": "", "error_code": code},
    )
    return value or 0.0


async def test_errors_are_counted_once_including_bodyless_ones(harness: Harness) -> None:
    call = harness.open()
    await call.write(headers_msg(path="/v1/models", method="GET", end_of_stream=True))
    reply = (await read(call)).immediate_response
    assert reply.status.code == 503
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(b"{not json"))
    await read(call)
    assert error_count(harness.director, "ServiceUnavailable") == 1
    assert error_count(harness.director, "BadRequest") == 1


class FailingPlugin:
    """Wraps the real request-control hooks and raises from one, standing in for a buggy plugin."""

    def __init__(self, inner: object, hook: str) -> None:
        self._inner = inner
        self._hook = hook

    def __getattr__(self, name: str) -> object:
        if name == self._hook:
            raise_error: Callable[..., None] = _raise
            return raise_error
        return getattr(self._inner, name)


def _raise(*args: object) -> None:
    raise RuntimeError("plugin bug")


async def test_a_failing_pre_request_plugin_gives_500_and_leaves_no_load(harness: Harness) -> None:
    harness.add("a", 8000)
    harness.director.hooks = FailingPlugin(harness.director.hooks, "pre_request")  # type: ignore[assignment]
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(COMPLETION))
    assert (await read(call)).immediate_response.status.code == 500
    endpoint = harness.datastore.get("a")
    assert endpoint is not None and (endpoint.inflight_requests, endpoint.inflight_tokens) == (0, 0)


async def test_failing_response_plugins_do_not_break_the_response(harness: Harness) -> None:
    harness.add("a", 8000)
    hooks = FailingPlugin(harness.director.hooks, "response_received")
    harness.director.hooks = FailingPlugin(hooks, "response_complete")  # type: ignore[assignment]
    call, endpoint = await streaming_request(harness)
    await call.write(response_body_msg(SSE[0], end_of_stream=True))
    assert (await read(call)).response_body.response.body_mutation.streamed_response.body == SSE[0]
    assert endpoint.inflight_requests == 0
    running = harness.director.metrics.registry.get_sample_value(
        "inference_objective_running_requests", {"model_name": "m"}
    )
    assert running == 0


async def response_headers_reply(
    harness: Harness, mode: int, content_type: str, extra: dict[str, str] | None = None
) -> ext_proc.ProcessingResponse:
    call = harness.open()
    await call.write(headers_msg(mode=mode, extra=extra))
    if mode == BodyMode.BUFFERED:
        await read(call)
    await call.write(body_msg(orjson.dumps({"model": "m", "prompt": "hi", "stream": True})))
    while (await read(call)).WhichOneof("response") != "request_body":
        pass
    await call.write(response_headers_msg(content_type))
    return await read(call)


@pytest.mark.parametrize(
    ("mode", "content_type", "extra", "skipped"),
    [
        (BodyMode.BUFFERED, "text/event-stream", None, True),
        (BodyMode.BUFFERED, "application/json", None, False),
        (BodyMode.BUFFERED, "text/event-stream", {"x-gateway-model-name-rewrite": "m2"}, False),
        (FDS, "text/event-stream", None, False),
    ],
)
async def test_streamed_response_bodies_are_skipped_where_envoy_allows_it(
    harness: Harness, mode: int, content_type: str, extra: dict[str, str] | None, skipped: bool
) -> None:
    # No ResponseStreaming plugin (the harness's active-request-scorer brings an
    # inflight-load-producer, which reads the first chunk: see the test below).
    harness.director.hooks = RequestControlHooks([], harness.director.metrics)
    harness.add("a", 8000, models=("m", "m2"))
    reply = await response_headers_reply(harness, mode, content_type, extra)
    assert reply.HasField("mode_override") is skipped
    if skipped:
        assert reply.mode_override.response_body_mode == BodyMode.NONE


async def test_streamed_response_bodies_are_read_for_an_inflight_load_producer(harness: Harness) -> None:
    """llm-d's inflight-load-producer frees a request's prompt tokens at the first SSE chunk, so
    a config with one (here the default one active-request-scorer reads) keeps the chunks coming."""
    harness.add("a", 8000)
    reply = await response_headers_reply(harness, BodyMode.BUFFERED, "text/event-stream")
    assert not reply.HasField("mode_override")


class ChunkReader(Plugin, ResponseStreaming):
    """Records the response chunks it is handed before the last."""

    type_name = "chunk-reader"

    def __init__(self, reads: bool) -> None:
        super().__init__("chunk-reader", None, PluginContext())
        self.reads_response_chunks = reads
        self.chunks: list[bytes] = []

    def response_streaming(self, request: InferenceRequest, result: SchedulingResult, chunk: bytes) -> None:
        self.chunks.append(chunk)


@pytest.mark.parametrize("reads", [True, False])
async def test_streamed_response_bodies_are_read_for_a_response_streaming_plugin(
    harness: Harness, reads: bool
) -> None:
    """Buffered mode skips an SSE response's chunks unless a ResponseStreaming plugin reads them
    (one whose configuration needs none does not count)."""
    reader = ChunkReader(reads)
    harness.director.hooks = RequestControlHooks([reader], harness.director.metrics)
    harness.add("a", 8000)
    reply = await response_headers_reply(harness, BodyMode.BUFFERED, "text/event-stream")
    assert reply.HasField("mode_override") is not reads


async def test_response_chunks_reach_the_streaming_plugin_until_the_end(harness: Harness) -> None:
    reader = ChunkReader(True)
    harness.director.hooks = RequestControlHooks([reader], harness.director.metrics)
    call, endpoint = await streaming_request(harness)
    for i, chunk in enumerate(SSE):
        await call.write(response_body_msg(chunk, end_of_stream=i == len(SSE) - 1))
        await read(call)
    assert reader.chunks == SSE[:-1]
    assert endpoint.inflight_requests == 0


def load(harness: Harness) -> list[tuple[int, int]]:
    return [(e.inflight_requests, e.inflight_tokens) for e in harness.datastore.endpoints()]


@pytest.mark.parametrize("field", range(len(DEEP_FIELDS)))
@pytest.mark.parametrize("depth", [255, 1024])
async def test_deeply_nested_valid_bodies_are_a_400_without_a_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture, field: int, depth: int
) -> None:
    harness.add("a", 8000)
    code, error = await error_reply(harness, deep_body(field, depth), DEEP_FIELDS[field][0])
    assert code == 400
    assert "nested deeper than the limit of 254 levels" in str(error["message"])
    assert not [r for r in caplog.records if r.exc_info], "no traceback is logged"
    assert load(harness) == [(0, 0)]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", deep_body(0, 300)),
        # Nested outside the prompt fields: only the rewrite re-serialises this one.
        ("/v1/completions", b'{"model":"m","prompt":"hi","extra":' + b"[" * 300 + b"]" * 300 + b"}"),
    ],
)
async def test_a_deep_body_with_a_model_rewrite_is_a_400_and_takes_no_load(
    harness: Harness, path: str, body: bytes
) -> None:
    harness.add("a", 8000, models=("m", "m-v2"))
    call = harness.open()
    await call.write(headers_msg(path=path, extra={"x-gateway-model-name-rewrite": "m-v2"}))
    await call.write(body_msg(body))
    reply = (await read(call)).immediate_response
    assert reply.status.code == 400, reply.body
    assert b"nested deeper than the limit of 254 levels" in reply.body
    await until(lambda: load(harness) == [(0, 0)])


GET_MODELS = {"path": "/v1/models", "method": "GET", "end_of_stream": True}


@pytest.mark.parametrize(
    ("mode", "sequence", "violation"),
    [
        # A second end of the body after the request was routed on the first.
        (FDS, ["headers", "body_end", "body_end"], "a request body after the request ended"),
        (BodyMode.BUFFERED, ["headers", "body", "body_end"], "a request body after the request ended"),
        # Request headers twice: routed on a bodyless first, or on the body in between.
        (FDS, ["get_models", "get_models"], "request headers twice"),
        (FDS, ["headers", "body_end", "headers"], "request headers twice"),
        # A body after the trailers that ended (and routed) the request.
        (FDS, ["headers", "body", "trailers", "body_end"], "a request body after the request ended"),
    ],
)
async def test_protocol_violations_route_at_most_once_and_release_the_load(
    harness: Harness, mode: int, sequence: list[str], violation: str
) -> None:
    harness.add("a", 8000)
    harness.add("b", 8001)
    messages = {
        "headers": lambda: headers_msg(mode=mode),
        "get_models": lambda: headers_msg(mode=mode, **GET_MODELS),  # type: ignore[arg-type]
        "body": lambda: body_msg(COMPLETION, end_of_stream=False),
        "body_end": lambda: body_msg(COMPLETION, end_of_stream=True),
        "trailers": trailers_msg,
    }
    call = harness.open()
    for name in sequence:
        await call.write(messages[name]())
    replies = []
    while not replies or replies[-1].WhichOneof("response") != "immediate_response":
        replies.append(await read(call))
    routed = [r for r in replies if r.dynamic_metadata.fields and "envoy.lb" in lb_metadata(r)]
    assert len([r for r in routed if "x-gateway-destination-endpoint" in str(lb_metadata(r))]) == 1
    final = replies[-1].immediate_response
    assert final.status.code == 500
    assert f"ext_proc protocol violation: {violation}".encode() in final.body
    await until(lambda: load(harness) == [(0, 0), (0, 0)])


@pytest.mark.parametrize(
    "ending", [None, body_msg(b""), trailers_msg()], ids=["headers", "empty DATA", "trailers"]
)
async def test_a_bodyless_poll_waits_for_a_peers_pin_before_it_is_routed(
    ending: ext_proc.ProcessingRequest | None,
) -> None:
    """Beside peer replicas, GET /v1/responses/{id} for a response whose pin is still on its way
    is answered once it came (the stream awaits the director's `prepare_bodyless`), at its
    endpoint; routed at once, it would go to any of 8 (each of 8 polls: 1 in 8). The same when
    the request ends after its headers, with an empty body or trailers."""
    director, previous, datastore = replica()
    loop = asyncio.get_running_loop()
    async with served(director) as stub:
        for i in range(8):
            held = datastore.get(f"s{i}")
            assert held is not None
            loop.call_later(0.02, previous.learn, held, [response_key(f"resp_{i}")])
            call = stub.Process()
            path = f"/v1/responses/resp_{i}"
            await call.write(headers_msg(path=path, method="GET", end_of_stream=ending is None))
            if ending is not None:
                await call.write(ending)
            reply = await read(call)
            assert routed_headers(reply)["x-gateway-destination-endpoint"] == held.hostport
            call.cancel()


@contextlib.asynccontextmanager
async def served(director: Director) -> AsyncIterator[ext_proc_grpc.ExternalProcessorStub]:
    """`director` behind an ext_proc server on 127.0.0.1, and a client's stub of it."""
    server = ext_proc_server(director, StreamOptions(), Health(lambda: True))
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ext_proc_grpc.ExternalProcessorStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
