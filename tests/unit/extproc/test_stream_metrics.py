"""llm-d's --enable-grpc-stream-metrics: real ext_proc streams over a real grpc.aio server,
counted by how they end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from epp.extproc.pb import ext_proc, ext_proc_grpc
from epp.extproc.server import bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.extproc.stream_metrics import StreamMetrics, go_code_name
from epp.stack.processes import wait_until
from tests.unit.extproc.test_stream_end import exchange, make_director


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (grpc.StatusCode.OK, "OK"),
        (grpc.StatusCode.CANCELLED, "Canceled"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "ResourceExhausted"),
        (grpc.StatusCode.UNKNOWN, "Unknown"),
    ],
)
def test_codes_carry_grpc_gos_names(code: grpc.StatusCode, name: str) -> None:
    assert go_code_name(code) == name


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


@contextlib.asynccontextmanager
async def metered(registry: CollectorRegistry) -> AsyncIterator[ext_proc_grpc.ExternalProcessorStub]:
    """A client of a real ext_proc server counting its streams into `registry`; the server is
    stopped on the way out, so what it counted is final."""
    server = ext_proc_server(make_director(), StreamOptions(), None, stream_metrics=StreamMetrics(registry))
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield ext_proc_grpc.ExternalProcessorStub(channel)
    finally:
        await server.stop(None)


async def test_streams_are_counted_open_then_by_how_they_ended() -> None:
    registry = CollectorRegistry()
    async with metered(registry) as stub:
        # A whole exchange, then the gateway half-closes: the stream ends OK.
        finished = stub.Process(iter(exchange()))
        replies = [reply async for reply in finished]
        assert len(replies) == 4
        assert value(registry, "llm_d_epp_extproc_streams_total", {"code": "OK"}) == 1

        # A stream the gateway cancels while it is open.
        open_until = asyncio.Event()

        async def headers_then_wait() -> AsyncIterator[ext_proc.ProcessingRequest]:
            yield exchange()[0]
            await open_until.wait()

        cancelled = stub.Process(headers_then_wait())
        await cancelled.read()  # the reply to the headers: the stream is open

        async def open_now() -> bool | None:
            return True if value(registry, "llm_d_epp_extproc_streams_inflight") == 1 else None

        await wait_until(open_now, "one open stream", 5, interval=0.01)
        cancelled.cancel()

        async def counted() -> bool | None:
            done = value(registry, "llm_d_epp_extproc_streams_total", {"code": "Canceled"})
            return True if done == 1 else None

        await wait_until(counted, "the cancelled stream's count", 5, interval=0.01)
        open_until.set()
    assert value(registry, "llm_d_epp_extproc_streams_inflight") == 0
    assert value(registry, "llm_d_epp_extproc_stream_duration_seconds_count") == 2


async def test_nothing_is_registered_unless_asked() -> None:
    registry = CollectorRegistry()
    ext_proc_server(make_director(), StreamOptions(), None)
    assert value(registry, "llm_d_epp_extproc_streams_inflight") is None


async def test_a_stream_the_gateway_resets_after_its_last_reply_ended_ok() -> None:
    """Envoy ends every stream so: its last message answered, it resets the stream without waiting
    for a status (the handler, waiting for that reset, is cancelled). llm-d's handler returns nil
    on that reset, so its streams count OK; counting the reset as Canceled counted every stream."""
    registry = CollectorRegistry()
    async with metered(registry) as stub:
        call = stub.Process()
        for message in exchange():
            await call.write(message)
            await call.read()
        call.cancel()  # the reset, at once after the last reply

        async def counted() -> bool | None:
            return True if value(registry, "llm_d_epp_extproc_streams_inflight") == 0 else None

        await wait_until(counted, "the stream's end", 5, interval=0.01)
    assert value(registry, "llm_d_epp_extproc_streams_total", {"code": "OK"}) == 1
    assert value(registry, "llm_d_epp_extproc_streams_total", {"code": "Canceled"}) is None


async def test_an_aborted_stream_counts_its_abort_code() -> None:
    """A handler that aborts (grpc.aio's AbortError) is counted under the code it aborted with,
    as grpc-go's interceptor reads it from the handler's error; one that raises, Unknown."""
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry)

    async def aborts(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")

    async def raises(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        raise RuntimeError("a bug")

    class Handlers(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            handler = aborts if details.method == "/t/aborts" else raises
            return grpc.stream_stream_rpc_method_handler(metrics.counted(handler))

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Handlers(),))
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method, code in (
                ("/t/aborts", grpc.StatusCode.RESOURCE_EXHAUSTED),
                ("/t/raises", grpc.StatusCode.UNKNOWN),
            ):
                call = channel.stream_stream(method)()
                await call.done_writing()
                assert await call.code() == code
    finally:
        await server.stop(None)
    assert value(registry, "llm_d_epp_extproc_streams_total", {"code": "ResourceExhausted"}) == 1
    assert value(registry, "llm_d_epp_extproc_streams_total", {"code": "Unknown"}) == 1
    assert value(registry, "llm_d_epp_extproc_streams_inflight") == 0
