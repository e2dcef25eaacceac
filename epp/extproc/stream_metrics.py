"""llm-d router's opt-in ext_proc stream metrics (`--enable-grpc-stream-metrics`): streams open
now, how long each stayed open, and how many ended with each gRPC status (Go's code names). Off by
default, as there: nothing is registered and the stream handler is the plain one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from epp.extproc.stream import ResetAfterEnd
from epp.metrics.families import Families

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600)

# The ext_proc handler writes its replies with `context.write` and returns nothing.
Handler = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], Awaitable[None]]


def go_code_name(code: grpc.StatusCode) -> str:
    """grpc-go's name of a status code (`OK`, `Canceled`, `ResourceExhausted`, ...)."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry, prefix="llm_d_epp_")
        self.inflight = f.gauge("extproc_streams_inflight", "Number of ext_proc gRPC streams currently open.")
        self.duration = f.histogram(
            "extproc_stream_duration_seconds",
            "Duration an ext_proc gRPC stream stays open, in seconds.",
            buckets=DURATION_BUCKETS,
        )
        self.total = f.counter(
            "extproc_streams_total", "Total ext_proc gRPC streams completed, by gRPC status code.", ["code"]
        )

    def finished(self, code: grpc.StatusCode, seconds: float) -> None:
        self.inflight.dec()
        self.duration.observe(seconds)
        self.total.labels(go_code_name(code)).inc()

    def counted(self, handler: Handler) -> Handler:
        """`handler` (a stream-stream method) with each call measured, whichever way it ends."""

        async def measured(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            self.inflight.inc()
            start = time.monotonic()
            code: grpc.StatusCode | None = None
            try:
                await handler(request_iterator, context)
            except ResetAfterEnd:  # the gateway's usual end of a stream: OK, as llm-d counts it
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN  # an abort sets its code
                raise
            finally:
                self.finished(code or context.code() or grpc.StatusCode.OK, time.monotonic() - start)

        return measured
