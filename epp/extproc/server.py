"""The grpc.aio servers: ext_proc for Envoy and grpc.health.v1 for probes."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.extproc import attributes, messages
from epp.extproc.pb import ext_proc, ext_proc_grpc, rlqs_grpc
from epp.extproc.rlqs import RateLimitQuotaService
from epp.extproc.stream import ExtProcStream, ResetAfterEnd, StreamOptions
from epp.extproc.stream_metrics import StreamMetrics
from epp.flowcontrol.overload import OverloadGuard
from epp.flowcontrol.quota_priority import ObjectiveCounts
from epp.headers import LLMD_OBJECTIVE_HEADER, OBJECTIVE_HEADER, either_header
from epp.requestcontrol import Director
from epp.requests import ErrorCode, RequestError

log = logging.getLogger(__name__)


class _LateStatusIsDebug(logging.Filter):
    """grpc.aio logs ERROR with a traceback when it cannot send a stream's final status because
    Envoy already closed the stream (the request is done by then; rare since streams wait for
    Envoy's reset, GATEWAY_CLOSE_WAIT). Operators alert on ERROR, so that one message is logged
    at DEBUG instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("ExecuteBatchError raised in core by servicer method"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


logging.getLogger("grpc._cython.cygrpc").addFilter(_LateStatusIsDebug())

# grpc.aio asks gRPC core for the next call only once the event loop has run the previous one's
# accept (a few loop iterations each): while the loop is saturated, new ext_proc streams wait in
# core's queue of calls not yet requested. Past 1,000 of them core drops new ones at random, past
# 3,000 all of them, each with a bare gRPC CANCELLED that Envoy turns into an opaque 503. Raised so
# every stream reaches the EPP, whose overload guard answers the excess itself (429, Retry-After).
# Envoy's message_timeout still bounds how long one waits.
MAX_PENDING_CALLS = 1_000_000
# Core also cancels (bare CANCELLED) a call left waiting there over 30 s by default: a backlog that
# takes the loop longer to accept lost its tail that way (seen under load in
# test_streams_queued_behind_a_saturated_loop_all_get_the_guards_429). The gateway bounds the wait
# instead: a call whose client gave up is cancelled by its reset, whatever this allows.
MAX_UNREQUESTED_SECONDS = 3600

# Envoy ends an ext_proc stream by half-closing and resetting it (RST_STREAM) at once, as soon as
# it has the last reply it needs, without waiting for a status. grpc.aio (1.85) never frees the
# grpc_op array of a batch that fails, or whose awaiting task is cancelled (grpc/grpc#43360): 96
# bytes of native heap each time, per request under load, growing the EPP's RSS without end. So
# no batch may be left to that reset: after its last reply (or Envoy's half-close) the stream
# waits this long for the reset instead of sending its status, and the reset cancels the wait with
# no batch in flight (a client that does not reset gets its status after the wait); the last
# reply's send, and a read after a reply that left Envoy nothing more to send, run where the reset
# does not cancel them (_through_reset).
GATEWAY_CLOSE_WAIT = 0.1

_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ("grpc.server_max_unrequested_time_in_server", MAX_UNREQUESTED_SECONDS),
    ("grpc.so_reuseport", 0),
]


class ExternalProcessor(ext_proc_grpc.ExternalProcessorServicer):
    def __init__(
        self,
        director: Director,
        options: StreamOptions,
        guard: OverloadGuard | None = None,
        seen: ObjectiveCounts | None = None,
    ) -> None:
        self._director = director
        self._options = options
        self._guard = guard
        self._seen = seen  # with the rate-limit quota: every request read, by objective
        # The last refusal answered: the guard answers every request it sheds under a standing
        # queue with the same RequestError, whose reply (and unread answer) is then built once.
        self._refusal: _Refusal | None = None

    async def Process(
        self,
        request_iterator: AsyncIterator[ext_proc.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """One stream, one way out: the last reply sent (through a reset), the request released,
        then a wait for the gateway's reset (GATEWAY_CLOSE_WAIT), which ends the call as
        ResetAfterEnd; a reset before the last reply is a client gone (CancelledError)."""
        call = _Call(context, aiter(request_iterator), self._guard)  # its admit() ran at dispatch
        try:
            try:
                message = await anext(call.incoming, None)
                if message is not None:
                    last = await self._exchange(call, message)
                    if last is not None:
                        await call.send_last(last)
            finally:
                call.close()
            if message is not None:  # an orderly end (never an error or a cancellation)
                await asyncio.sleep(GATEWAY_CLOSE_WAIT)
        except asyncio.CancelledError as reset:
            if not call.ended:
                raise
            raise ResetAfterEnd(*reset.args) from None

    async def _exchange(
        self, call: _Call, message: ext_proc.ProcessingRequest
    ) -> ext_proc.ProcessingResponse | None:
        """Answer the stream's messages from `message` on, until it ends. Returns the reply that
        ends it early (the guard's refusal, a 500, an eviction's 429) for the caller to send last;
        None once the stream is done or Envoy half-closed it."""
        objective = None
        if self._seen is not None:
            objective = _objective(message)
            self._seen.seen(objective)
        guard = self._guard
        if guard is not None and guard.checks_wait:
            sheddable = bool(objective) and self._director.objectives.get(objective or "", 0) < 0
            refusal = _waited_too_long(guard, message, sheddable)
            if refusal is not None:
                return self.refuse(refusal)
        context, incoming = call.context, call.incoming
        stream = call.stream = ExtProcStream(self._director, self._options)
        while True:
            # A send: its failure (the gateway gone) is not the EPP's, answered below.
            extend = stream.extend_message_timeout(message)
            if extend is not None:
                await context.write(extend)
            try:
                # One awaited step per body: flow control's queue, then async data producers.
                await stream.prepare(message, context.time_remaining())
                replies = list(stream.handle(message))
            except Exception:
                log.exception("ext_proc stream failed; answering 500")
                error = RequestError(ErrorCode.INTERNAL, "the endpoint picker failed to process the request")
                self._director.record_error(error, None)
                return messages.immediate_error(error, self._options.error_prefix)
            end_next = stream.done or stream.only_end_left  # Envoy may reset after these replies
            for reply in replies[:-1] if end_next else replies:
                await context.write(reply)
            call.ended = end_next
            if end_next and replies:
                await call.send_last(replies[-1])
            if stream.done:
                return None
            eviction = stream.eviction_signal
            if eviction is None:  # the common case, kept cheap: one plain read
                next_message = await (
                    _through_reset(anext(incoming, None)) if end_next else anext(incoming, None)
                )
            else:
                next_message = await _message_or_eviction(incoming, eviction)
                if next_message is Evicted.FIRST:
                    return stream.evicted()
            if next_message is None:  # Envoy half-closes (then resets at once)
                return None
            message = next_message
            call.ended = False  # more came (a skip the gateway did not honour): not ended yet

    def refuse(self, refusal: RequestError) -> ext_proc.ProcessingResponse:
        """The overload guard's answer to a stream it read, counted as every error answer."""
        return self._refused(refusal).reply

    def refuse_unread(self, refusal: RequestError) -> grpc.RpcMethodHandler:
        """The guard's answer to a call none of whose messages is read, as its handler."""
        answer = self._refused(refusal)
        if answer.handler is None:
            answer.handler = _answer(answer.reply)
        return answer.handler

    def _refused(self, refusal: RequestError) -> _Refusal:
        self._director.record_error(refusal, None)
        last = self._refusal
        if last is None or last.error is not refusal:
            reply = messages.immediate_error(refusal, self._options.error_prefix)
            last = self._refusal = _Refusal(refusal, reply)
        return last


@dataclass(slots=True)
class _Call:
    """One ext_proc call: what its single way out needs. Enters the overload guard's count."""

    context: grpc.aio.ServicerContext
    incoming: AsyncIterator[ext_proc.ProcessingRequest]
    guard: OverloadGuard | None
    stream: ExtProcStream | None = None
    # Our last reply is on its way or sent: a reset from now on is the gateway's usual end of
    # the stream (ResetAfterEnd), not a client gone mid-request.
    ended: bool = False

    def __post_init__(self) -> None:
        if self.guard is not None:
            self.guard.enter()

    async def send_last(self, reply: ext_proc.ProcessingResponse) -> None:
        self.ended = True
        await _through_reset(self.context.write(reply))

    def close(self) -> None:
        """However the call ended: the request's load released, and the guard's slot given back
        even if closing the stream failed."""
        try:
            if self.stream is not None:
                self.stream.close()
        finally:
            if self.guard is not None:
                self.guard.leave()


@dataclass(slots=True)
class _Refusal:
    error: RequestError
    reply: ext_proc.ProcessingResponse
    handler: grpc.RpcMethodHandler | None = None  # made when a call is refused unread


class ExtProcDispatch(grpc.GenericRpcHandler):
    """Chooses each new ext_proc call's handler before any of its messages is read: the processor's
    stream, or, when the overload guard refuses the call, an answer that reads nothing and sends
    the reply with the call's status in one batch (Envoy sends its first message with the stream
    and takes this answer for it). Measured in grpc.aio: about 0.25 ms of CPU per refusal, against
    0.3 ms for a stream handler's refusal and 0.3 to 0.5 ms when it reads the first message."""

    def __init__(
        self,
        processor: ExternalProcessor,
        guard: OverloadGuard | None,
        stream_metrics: StreamMetrics | None = None,
    ) -> None:
        self._processor = processor
        self._guard = guard
        self._stream_metrics = stream_metrics
        process: Any = processor.Process
        if stream_metrics is not None:
            process = stream_metrics.counted(processor.Process)
        self._stream = grpc.stream_stream_rpc_method_handler(
            process,
            request_deserializer=ext_proc.ProcessingRequest.FromString,
            response_serializer=ext_proc.ProcessingResponse.SerializeToString,
        )

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != PROCESS_METHOD:
            return None
        refusal = None if self._guard is None else self._guard.admit()
        if refusal is None:
            return self._stream
        if self._stream_metrics is not None:  # answered at once, with an OK status
            self._stream_metrics.inflight.inc()
            self._stream_metrics.finished(grpc.StatusCode.OK, 0.0)
        return self._processor.refuse_unread(refusal)


def _answer(reply: ext_proc.ProcessingResponse) -> grpc.RpcMethodHandler:
    async def answer(
        request_iterator: AsyncIterator[ext_proc.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> ext_proc.ProcessingResponse:
        return reply

    return grpc.stream_unary_rpc_method_handler(
        answer, response_serializer=ext_proc.ProcessingResponse.SerializeToString
    )


def _waited_too_long(
    guard: OverloadGuard, message: ext_proc.ProcessingRequest, sheddable: bool = True
) -> RequestError | None:
    """The guard's refusal of a request that waited too long before its headers reached the EPP
    (the gateway's `request.time` against this host's clock); None when it did not, or when the
    gateway does not send the attribute."""
    received = attributes.request_time(message)
    return None if received is None else guard.waited(time.time() - received, sheddable)


def _objective(message: ext_proc.ProcessingRequest) -> str | None:
    """The objective a stream's first message (its request headers) names, if any: the last of a
    repeated header, llm-d's name before GIE's, as the director reads them (messages.read_headers,
    headers.either_header)."""
    named: dict[str, str] = {}
    for header in reversed(message.request_headers.headers.headers):
        if header.key in _OBJECTIVE_HEADERS and header.key not in named:
            named[header.key] = messages.header_value(header)
    return either_header(named, LLMD_OBJECTIVE_HEADER, OBJECTIVE_HEADER)


_OBJECTIVE_HEADERS = (LLMD_OBJECTIVE_HEADER, OBJECTIVE_HEADER)


_T = TypeVar("_T")
# Batches handed to _through_reset or left running by _message_or_eviction, until they end: the
# event loop keeps only weak references to tasks.
_unawaited: set[asyncio.Future[Any]] = set()


def _keep(batch: Awaitable[_T]) -> asyncio.Future[_T]:
    """`batch` (a read or a send) running in a task of its own, kept until it ends, its
    outcome marked seen (after a reset it is the reset's error, which no one reads)."""
    task = asyncio.ensure_future(batch)
    _unawaited.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Future[Any]) -> None:
    _unawaited.discard(task)
    if not task.cancelled():
        task.exception()


async def _through_reset(batch: Awaitable[_T]) -> _T:
    """A read or send that Envoy's reset may interrupt, awaited so that the reset cancels only
    the waiting: the batch completes and is freed (a batch whose awaiting task is cancelled keeps
    its grpc_op array, grpc/grpc#43360). The stream's last reply, and a read after a reply that
    left Envoy nothing more to send."""
    return await asyncio.shield(_keep(batch))


class Evicted(enum.Enum):
    FIRST = "flow control evicted the request before the stream's next message or end"


async def _message_or_eviction(
    incoming: AsyncIterator[ext_proc.ProcessingRequest], eviction: asyncio.Future[None]
) -> ext_proc.ProcessingRequest | Evicted | None:
    """The stream's next message; None at its end; Evicted.FIRST when `eviction` (flow control
    taking the routed request back) comes first. A message or the stream's end that arrives with
    the eviction goes first: the message may end the response, the end has ended the request, and
    an ended request is not evicted (no 429 into a finished stream). A read the eviction or a
    reset leaves behind is not cancelled (that would leak its batch, as in _through_reset): it
    ends with the stream."""
    reading = _keep(anext(incoming, None))
    await asyncio.wait((reading, eviction), return_when=asyncio.FIRST_COMPLETED)
    return reading.result() if reading.done() else Evicted.FIRST


EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
PROCESS_METHOD = f"/{EXT_PROC_SERVICE}/Process"
LIVENESS_SERVICE = "liveness"
READINESS_SERVICE = "readiness"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health(health_pb2_grpc.HealthServicer):
    """GIE's EPP health answers. Without leader election: SERVING for any service name once the
    endpoint pool is known (probes use `inference-extension`, Envoy the ext_proc name). With it
    (`leader` given): `liveness` is always SERVING; `readiness`, `""` and the ext_proc service
    are SERVING only on the leader once synced, so the gateway's Service routes to the leader
    alone; any other name is SERVICE_UNKNOWN."""

    def __init__(self, ready: Callable[[], bool], leader: Callable[[], bool] | None = None) -> None:
        self._ready = ready
        self._leader = leader

    def status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        if self._leader is None:
            return _SERVING if self._ready() else _NOT_SERVING
        if service == LIVENESS_SERVICE:
            return _SERVING
        if service in (READINESS_SERVICE, "", EXT_PROC_SERVICE):
            return _SERVING if self._ready() and self._leader() else _NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext,
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self.status(request.service))

    async def List(
        self,
        request: health_pb2.HealthListRequest,
        context: grpc.aio.ServicerContext,
    ) -> health_pb2.HealthListResponse:
        """GIE's: the ext_proc service, and with leader election `liveness` and `readiness`."""
        services = [EXT_PROC_SERVICE]
        if self._leader is not None:
            services += [LIVENESS_SERVICE, READINESS_SERVICE]
        statuses = {name: health_pb2.HealthCheckResponse(status=self.status(name)) for name in services}
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            current = self.status(request.service)
            if current != last:
                last = current
                yield health_pb2.HealthCheckResponse(status=current)
            await asyncio.sleep(1.0)


def bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Listen on host:port (port 0 picks a free one) and return the bound port."""
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return port


def _options(reuse_port: bool, message_limits: tuple[int, int] = (0, 0)) -> list[tuple[str, int]]:
    """SO_REUSEPORT stays off (a second EPP on a taken port fails loudly) unless worker processes
    share the ports on purpose (`epp serve --workers`). A message limit above 0 (llm-d's
    --grpc-max-recv-msg-size / --grpc-max-send-msg-size) replaces the default for its direction."""
    receive, send = message_limits
    options = dict(_GRPC_OPTIONS)
    options["grpc.so_reuseport"] = int(reuse_port)
    if receive > 0:
        options["grpc.max_receive_message_length"] = receive
    if send > 0:
        options["grpc.max_send_message_length"] = send
    return list(options.items())


def ext_proc_server(
    director: Director,
    options: StreamOptions,
    health: Health | None,
    guard: OverloadGuard | None = None,
    reuse_port: bool = False,
    message_limits: tuple[int, int] = (0, 0),
    stream_metrics: StreamMetrics | None = None,
    quota: RateLimitQuotaService | None = None,
) -> grpc.aio.Server:
    """ext_proc, and grpc.health.v1 beside it unless `health` is None (GIE's --health-checking),
    and Envoy's rate-limit quota service with `quota` (never behind the overload guard)."""
    server = grpc.aio.server(options=_options(reuse_port, message_limits))
    processor = ExternalProcessor(director, options, guard, None if quota is None else quota.seen)
    server.add_generic_rpc_handlers((ExtProcDispatch(processor, guard, stream_metrics),))
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if quota is not None:
        rlqs_grpc.add_RateLimitQuotaServiceServicer_to_server(quota, server)
    return server


def health_server(health: Health, reuse_port: bool = False) -> grpc.aio.Server:
    server = grpc.aio.server(options=_options(reuse_port))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server
