"""inflight-load-producer through the real ext_proc server (gRPC, FULL_DUPLEX_STREAMED and
BUFFERED): every way a routed request ends frees its load exactly once, and the prompt tokens
go at the first SSE chunk, as in llm-d router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import MappingProxyType

import grpc
import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.extproc.pb import BodyMode, ext_proc_grpc
from epp.extproc.server import Health, bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.framework import PluginContext
from epp.plugins.inflight_load_producer import InFlightLoadProducer
from epp.requestcontrol import Director
from tests.unit.extproc.test_extproc_stream import (
    SSE,
    body_msg,
    headers_msg,
    read,
    response_body_msg,
    response_headers_msg,
    set_headers,
    until,
)

CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: inflight-load-producer, name: load}
- {type: token-load-scorer, parameters: {inFlightLoadProducerName: load}}
schedulingProfiles:
- {name: default, plugins: [{pluginRef: token-load-scorer}]}
"""
PROMPT_TOKENS = 50
BODY = orjson.dumps({"model": "m", "prompt": "x" * (4 * PROMPT_TOKENS), "stream": True})


class Harness:
    def __init__(
        self, director: Director, producer: InFlightLoadProducer, stub: ext_proc_grpc.ExternalProcessorStub
    ) -> None:
        self.director = director
        self.producer = producer
        self.stub = stub
        for name, port in (("a", 8000), ("b", 8001)):
            director.datastore.upsert(
                EndpointSpec(
                    name=name,
                    address="10.0.0.1",
                    port=port,
                    models=frozenset({"m"}),
                    labels=MappingProxyType({}),
                )
            )

    def load(self) -> dict[str, tuple[int, int]]:
        return {
            e.name: (self.producer.load.requests(e), self.producer.load.tokens(e))
            for e in self.director.datastore.endpoints()
        }

    def endpoint(self, name: str) -> Endpoint:
        found = self.director.datastore.get(name)
        assert found is not None
        return found

    def endpoint_at(self, hostport: str) -> Endpoint:
        found = self.director.endpoint_at(hostport)
        assert found is not None
        return found

    async def route(self, mode: int) -> tuple[grpc.aio.StreamStreamCall, str]:
        """A streaming request routed; the name of the endpoint picked."""
        call = self.stub.Process()
        await call.write(headers_msg(mode=mode))
        if mode == BodyMode.BUFFERED:
            await read(call)
        await call.write(body_msg(BODY))
        reply = await read(call)
        kind = reply.WhichOneof("response")
        common = getattr(reply, kind).response
        if mode == BodyMode.FULL_DUPLEX_STREAMED:
            await read(call)  # the streamed body
        return call, self.endpoint_at(set_headers(common)["x-gateway-destination-endpoint"]).name


@pytest.fixture(params=[BodyMode.FULL_DUPLEX_STREAMED, BodyMode.BUFFERED], ids=["fds", "buffered"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Harness, int]]:
    datastore = Datastore()
    datastore.synced = True
    config = load_config(CONFIG)
    director, components = build_director(config, datastore, PluginContext())
    producer = components.plugins["load"]
    assert isinstance(producer, InFlightLoadProducer)
    server = ext_proc_server(director, StreamOptions(max_body_bytes=200_000), Health(lambda: True))
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    h = Harness(director, producer, ext_proc_grpc.ExternalProcessorStub(channel))
    yield h, request.param
    await channel.close()
    await server.stop(0)


IDLE = {"a": (0, 0), "b": (0, 0)}


def charged(picked: str, requests: int, tokens: int) -> dict[str, tuple[int, int]]:
    return {**IDLE, picked: (requests, tokens)}


async def test_sse_response_frees_the_prompt_at_its_first_chunk_and_the_request_at_its_end(
    harness: tuple[Harness, int],
) -> None:
    h, mode = harness
    call, picked = await h.route(mode)
    assert h.load() == charged(picked, 1, PROMPT_TOKENS)
    await call.write(response_headers_msg("text/event-stream"))
    await read(call)
    assert h.load() == charged(picked, 1, PROMPT_TOKENS)  # headers are not the first byte
    await call.write(response_body_msg(SSE[0], end_of_stream=False))
    await read(call)
    assert h.load() == charged(picked, 1, 0)
    await call.write(response_body_msg(SSE[1], end_of_stream=False))
    await read(call)
    await call.write(response_body_msg(SSE[2] + SSE[3], end_of_stream=True))
    await read(call)
    await until(lambda: h.load() == IDLE)  # freed once the reply is out


async def test_a_json_response_holds_everything_until_its_end(harness: tuple[Harness, int]) -> None:
    h, mode = harness
    call, picked = await h.route(mode)
    await call.write(response_headers_msg("application/json"))
    await read(call)
    await call.write(response_body_msg(b'{"choices":', end_of_stream=False))
    if mode == BodyMode.FULL_DUPLEX_STREAMED:
        await read(call)
    assert h.load() == charged(picked, 1, PROMPT_TOKENS)
    await call.write(response_body_msg(b"[]}", end_of_stream=True))
    await read(call)
    await until(lambda: h.load() == IDLE)  # freed once the reply is out


async def test_client_disconnect_mid_stream_frees_the_request(harness: tuple[Harness, int]) -> None:
    h, mode = harness
    call, picked = await h.route(mode)
    await call.write(response_headers_msg("text/event-stream"))
    await read(call)
    await call.write(response_body_msg(SSE[0], end_of_stream=False))
    await read(call)
    assert h.load() == charged(picked, 1, 0)
    call.cancel()
    await until(lambda: h.load() == IDLE)


async def test_a_reset_before_the_response_frees_the_prompt_too(harness: tuple[Harness, int]) -> None:
    h, mode = harness
    call, picked = await h.route(mode)
    assert h.load() == charged(picked, 1, PROMPT_TOKENS)
    call.cancel()
    await until(lambda: h.load() == IDLE)


async def test_an_error_response_frees_the_request(harness: tuple[Harness, int]) -> None:
    h, mode = harness
    call, picked = await h.route(mode)
    await call.write(response_headers_msg("application/json", status="500"))
    await read(call)
    assert h.load() == charged(picked, 1, PROMPT_TOKENS)
    await call.write(response_body_msg(b'{"error":"boom"}', end_of_stream=True))
    await read(call)
    await until(lambda: h.load() == IDLE)  # freed once the reply is out


@pytest.mark.parametrize("mapped", [False, True])
async def test_a_gateway_retry_moves_the_load_to_the_endpoint_that_served(
    harness: tuple[Harness, int], mapped: bool
) -> None:
    """The gateway retried the request on another endpoint (its report on the response headers):
    the load leaves the failed pick for the one serving, as the director's own counts do, and is
    freed there exactly once. llm-d's producer kept it on the failed pick until the end. A report
    naming the endpoint by its IPv4-mapped address names that endpoint."""
    h, mode = harness
    call, picked = await h.route(mode)
    other = "b" if picked == "a" else "a"
    address = f"[::ffff:{h.endpoint(other).address}]" if mapped else h.endpoint(other).address
    served = {"x-gateway-destination-endpoint-served": f"{address}:{h.endpoint(other).port}"}
    await call.write(response_headers_msg("text/event-stream", extra=served))
    await read(call)
    assert h.load() == charged(other, 1, PROMPT_TOKENS)
    assert (h.endpoint(picked).inflight_requests, h.endpoint(other).inflight_requests) == (0, 1)
    await call.write(response_body_msg(SSE[0], end_of_stream=False))
    await read(call)
    assert h.load() == charged(other, 1, 0)
    call.cancel()
    await until(lambda: h.load() == IDLE)


async def test_many_concurrent_requests_all_end_at_zero(harness: tuple[Harness, int]) -> None:
    """Interleaved requests ending every way: nothing leaks, nothing is freed twice."""
    h, mode = harness
    calls = [await h.route(mode) for _ in range(6)]
    assert sum(r for r, _ in h.load().values()) == 6
    for i, (call, _) in enumerate(calls):
        await call.write(response_headers_msg("text/event-stream"))
        await read(call)
        if i % 3 == 0:
            call.cancel()
            continue
        await call.write(response_body_msg(SSE[0], end_of_stream=i % 3 == 1))
        await read(call)
    assert sum(t for _, t in h.load().values()) == 0  # every prompt freed at its first chunk
    for i, (call, _) in enumerate(calls):
        if i % 3 == 2:
            await call.write(response_body_msg(SSE[3], end_of_stream=True))
            await read(call)
    await until(lambda: h.load() == IDLE)
