"""One ext_proc stream = one HTTP request. A small state machine turns Envoy's messages into
director calls and answers in the order Envoy expects for the negotiated body mode."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import duration_pb2

from epp import tracing
from epp.extproc import messages
from epp.extproc.pb import BodyMode, HeaderMode, ext_proc, processing_mode
from epp.flowcontrol.eviction import DROPPED_REASON_EVICTED, DROPPED_REASON_HEADER, EVICTED_MESSAGE
from epp.headers import (
    DESTINATION_HEADER,
    LB_NAMESPACE,
    OWNED_HEADERS,
    REQUEST_ID_HEADER,
    SERVED_KEY,
)
from epp.requestcontrol import Director, RoutedRequest
from epp.requestcontrol.director import ParsedBody
from epp.requests import ErrorCode, RequestError
from epp.requests.jsontext import MAX_JSON_CONTAINERS

if TYPE_CHECKING:
    from epp.tracing.spans import RequestTrace

log = logging.getLogger(__name__)

# Enum values read once: the protobuf enum wrapper looks each attribute up by name, per access.
FULL_DUPLEX = BodyMode.FULL_DUPLEX_STREAMED
BUFFERED = BodyMode.BUFFERED
NO_BODY = BodyMode.NONE
SKIP_RESPONSE_BODY = processing_mode.ProcessingMode(
    response_body_mode=NO_BODY, response_trailer_mode=HeaderMode.SKIP
)


class ResetAfterEnd(asyncio.CancelledError):
    """The gateway's reset of a stream that had ended in order (its last reply sent, or the
    gateway's half-close), which the stream waits for rather than sending a status. Still a
    cancellation (grpc.aio must send nothing after a reset), but the stream did not fail: llm-d's
    handler returns nil there, so its stream metrics count it OK."""


@dataclass(frozen=True, slots=True)
class StreamOptions:
    max_body_bytes: int = 16 * 1024 * 1024
    # Arrays and objects a body may open (epp.requests.jsontext.MAX_JSON_CONTAINERS); 0: no limit.
    max_json_containers: int = MAX_JSON_CONTAINERS
    error_prefix: str = "inference error"
    # Response header naming the endpoint the EPP chose (for debugging and tests); None = off.
    served_header: str | None = None
    # Honour the gateway's envoy.lb.subset_hint (off: GIE's --disable-endpoint-subset-filter).
    use_subset_hint: bool = True
    # Read streamed (SSE) response bodies for their usage: one ext_proc round trip per chunk,
    # i.e. per generated token. Off, the EPP asks Envoy to stop sending them (see _response_headers).
    read_streamed_responses: bool = False
    # While flow control is busy, a request whose body is BUFFERED asks Envoy to wait this long
    # for the answer (override_message_timeout; Envoy honours up to its max_message_timeout) so a
    # queued request is not cut by Envoy's message_timeout. 0: never ask.
    queue_message_timeout: float = 300.0
    # llm-d's --emit-endpoint-scores: the primary profile's totals in envoy.lb (its profiles must
    # keep them: SchedulerProfile.keep_scores).
    emit_endpoint_scores: bool = False


RESPONSE_KINDS = frozenset({"response_headers", "response_body", "response_trailers"})


class ExtProcStream:
    """Fed ProcessingRequests one by one; yields the replies each one calls for."""

    def __init__(self, director: Director, options: StreamOptions) -> None:
        self._director = director
        self._options = options
        self._request_mode = FULL_DUPLEX
        self._response_mode = NO_BODY
        self._headers: dict[str, str] = {}
        self._generated_request_id: str | None = None
        # The request body so far: the first message's bytes as they are (a BUFFERED body is one
        # message, and `bytes()` of it below is no copy), a bytearray once a second one comes.
        self._body: bytes | bytearray = b""
        self._subset: list[str] | None = None
        # When the request's headers came (`_arrived`), and the same until its processing is
        # observed (llm-d's request_processing_duration_seconds: once, when routed or refused).
        self._arrived: float | None = None
        self._received: float | None = None
        self._response_cost = 0.0  # seconds spent handling the response's messages
        self._routed: RoutedRequest | None = None
        # A refusal from the awaited step (admission, flow control), answered by `handle`.
        self._refusal: RequestError | None = None
        self._headers_seen = False
        self._trailers_seen = False
        # The request's headers or body ended, or its trailers came: nothing of it may follow.
        self._request_ended = False
        self._trace: RequestTrace | None = None  # tracing on: this exchange's spans
        # What the awaited step (`prepare`) parsed, admitted and prepared for the body.
        self._prepared: ParsedBody | None = None
        self.done = False
        # The last reply asked Envoy to skip the rest of the response (a streamed response's
        # body and trailers): Envoy sends nothing more, only the stream's end follows.
        self.only_end_left = False
        # Resolved when flow control evicts the routed request; None while there is nothing to
        # evict (not routed yet, not evictable, or the stream done).
        self.eviction_signal: asyncio.Future[None] | None = None

    # --- entry point -------------------------------------------------------------------------

    def handle(self, message: ext_proc.ProcessingRequest) -> Iterator[ext_proc.ProcessingResponse]:
        self.only_end_left = False  # a message after the skip: the gateway did not honour it
        if message.HasField("protocol_config"):
            self._request_mode = message.protocol_config.request_body_mode
            self._response_mode = message.protocol_config.response_body_mode
        if self._options.use_subset_hint and message.HasField("metadata_context"):
            hint = messages.read_subset_hint(message.metadata_context)
            if hint is not None:
                self._subset = hint
        kind = message.WhichOneof("request")
        try:
            if kind == "request_headers":
                yield from self._request_headers(message.request_headers)
            elif kind == "request_body":
                yield from self._request_body(message.request_body)
            elif kind == "request_trailers":
                yield from self._request_trailers()
            elif kind in RESPONSE_KINDS:
                started = time.perf_counter()
                try:
                    yield from self._response(message, kind)
                finally:
                    self._response_cost += time.perf_counter() - started
        except RequestError as error:
            yield self._reject(error)
        except Exception:
            self._processed()  # answered 500 by the server: llm-d observes a failed request too
            raise

    def _response(
        self, message: ext_proc.ProcessingRequest, kind: str
    ) -> Iterator[ext_proc.ProcessingResponse]:
        if kind == "response_headers":
            metadata = messages.read_metadata(message.metadata_context)
            yield from self._response_headers(message.response_headers, metadata)
        elif kind == "response_body":
            yield from self._response_body(message.response_body)
        else:
            yield from self._response_trailers()

    def extend_message_timeout(
        self, message: ext_proc.ProcessingRequest
    ) -> ext_proc.ProcessingResponse | None:
        """Before a body that may wait in flow control's queue (BUFFERED mode has Envoy's message
        timeout, FULL_DUPLEX_STREAMED none): ask Envoy to wait as long as the queue may hold it."""
        flow_control = self._director.flow_control
        limit = self._options.queue_message_timeout
        if flow_control is None or limit <= 0 or self._request_mode == FULL_DUPLEX:
            return None
        if not self._completes_body(message):
            return None
        try:
            busy = flow_control.busy
        except Exception:
            # A detector that raises: the request's own step (`prepare`, flow control's queue)
            # meets it again and answers 500, counted; raised here it would end the gRPC call.
            return None
        if not busy:
            return None
        ttl = flow_control.config.default_request_ttl
        seconds = min(limit, ttl + 1.0) if ttl > 0 else limit
        return ext_proc.ProcessingResponse(
            override_message_timeout=duration_pb2.Duration(seconds=math.ceil(seconds))
        )

    async def prepare(self, message: ext_proc.ProcessingRequest, deadline: float | None = None) -> None:
        """The awaited step between the body's arrival and the synchronous routing in `handle`,
        for the message that completes the request body: the director's `prepare_body` (flow
        control's queue, then the async data producers such as tokenization). A no-op when
        neither is configured. A refusal is kept and answered by `handle`; a cancelled wait (the
        client gone) propagates, leaving no load taken. For a request that ends at its headers,
        or whose body turns out empty: the director's `prepare_bodyless` (what a BodylessRouter
        plugin waits for)."""
        if (
            message.WhichOneof("request") == "request_headers"
            and message.request_headers.end_of_stream
            and self._director.hooks.routes_bodyless
            and not self._headers_seen
        ):
            # The request arrives now, before its headers are handled: the wait is its own.
            self._arrived = self._received = time.monotonic()
            await self._bodyless(messages.read_headers(message.request_headers))
            return
        if not self._completes_body(message):
            return
        chunk = message.request_body.body if message.HasField("request_body") else b""
        if not self._body and not chunk:
            await self._bodyless(self._headers)
            return
        if not self._director.prepares_async:
            return
        body = bytes(self._body) + chunk
        if len(body) > self._options.max_body_bytes:
            return  # handle() refuses it
        try:
            self._prepared = await self._director.prepare_body(
                body, self._headers, self._trace, self._subset, deadline
            )
        except RequestError as error:
            self._refusal = error
        except BaseException:
            # The client left while its request waited (cancelled), or the step failed (the
            # server answers 500): llm-d observes both, the wait included.
            self._processed()
            raise

    async def _bodyless(self, headers: dict[str, str]) -> None:
        """The director's `prepare_bodyless` (a BodylessRouter's wait): a client gone while it
        waits is observed, as one gone while its request waits in flow control."""
        try:
            await self._director.prepare_bodyless(headers)
        except BaseException:
            self._processed()
            raise

    def _completes_body(self, message: ext_proc.ProcessingRequest) -> bool:
        if not self._headers_seen or self._request_ended or self._routed is not None:
            return False
        kind = message.WhichOneof("request")
        if kind == "request_body":
            return message.request_body.end_of_stream or self._request_mode == BUFFERED
        return kind == "request_trailers"

    def close(self) -> None:
        """The stream ended, however it ended: release the request's load exactly once, and
        observe what handling its response cost the EPP (llm-d's
        response_processing_duration_seconds: the sum of the response messages' handling, for a
        stream that reached its response)."""
        self._release()
        if self._response_cost:
            self._director.metrics.response_processing.observe(self._response_cost)
            self._response_cost = 0.0

    def _release(self) -> None:
        if self._routed is not None:
            self._routed.finish()
        if self._trace is not None:
            self._trace.end()

    # --- request path --------------------------------------------------------------------------

    def _violation(self, what: str) -> RequestError:
        """A message Envoy never sends in this order. Refused (ending the stream, which releases
        any load taken) rather than acted on: acting could route the request a second time."""
        return self._director.refuse(ErrorCode.INTERNAL, f"ext_proc protocol violation: {what}")

    def _request_headers(self, headers: ext_proc.HttpHeaders) -> Iterator[ext_proc.ProcessingResponse]:
        if self._headers_seen:
            raise self._violation("request headers twice")
        if self._request_ended or self._routed is not None:
            raise self._violation("request headers after the request ended")
        self._headers_seen = True
        if self._arrived is None:  # else it came before a BodylessRouter's wait (`prepare`)
            self._arrived = self._received = time.monotonic()
        self._request_ended = headers.end_of_stream
        self._headers = messages.read_headers(headers)
        if not self._headers.get(REQUEST_ID_HEADER):
            self._generated_request_id = str(uuid.uuid4())
            self._headers[REQUEST_ID_HEADER] = self._generated_request_id
        if tracing.active is not None:
            self._trace = tracing.active.start_request(self._headers)
        if headers.end_of_stream:
            self._routed = self._director.handle_bodyless(self._headers, self._subset)
            self._processed()
            yield self._routing_response("request_headers", streaming=False)
        elif self._request_mode == BUFFERED:
            # Envoy will not send the body until the headers are answered; route on the body reply.
            yield ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse())
        elif self._request_mode != FULL_DUPLEX:
            # STREAMED forwards body chunks (and, with header routing, opens the upstream) before
            # the whole body is here; NONE never shows the body. Refuse rather than route blind.
            mode = BodyMode.Name(self._request_mode)
            raise self._director.refuse(
                ErrorCode.INTERNAL,
                f"the gateway sends request bodies in ext_proc mode {mode}; the endpoint picker needs "
                "FULL_DUPLEX_STREAMED or BUFFERED to route on the body",
            )

    def _request_body(self, body: ext_proc.HttpBody) -> Iterator[ext_proc.ProcessingResponse]:
        if self._request_ended or self._routed is not None:
            raise self._violation("a request body after the request ended")
        self._request_ended = body.end_of_stream
        chunk = body.body
        if not self._body:
            self._body = chunk
        else:
            if isinstance(self._body, bytes):
                self._body = bytearray(self._body)
            self._body += chunk
        if len(self._body) > self._options.max_body_bytes:
            raise self._director.refuse(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"request body exceeds the limit of {self._options.max_body_bytes} bytes",
            )
        if body.end_of_stream:
            yield from self._route(end_of_stream=True)
        elif self._request_mode == BUFFERED:
            # The one buffered body message is the whole body; end_of_stream is false only
            # because trailers follow.
            yield from self._route(end_of_stream=False)

    def _request_trailers(self) -> Iterator[ext_proc.ProcessingResponse]:
        if self._trailers_seen:
            raise self._violation("request trailers twice")
        self._trailers_seen = self._request_ended = True
        if self._routed is None and self._request_mode == BUFFERED:
            # Envoy sends a buffered body before the trailers, and the body's reply routes; only
            # a request with no body comes to its trailers unrouted, and a trailers reply can
            # neither set the request's headers nor clear Envoy's route cache.
            raise self._director.refuse(
                ErrorCode.BAD_REQUEST,
                "a request without a body cannot end with trailers through this gateway "
                "(ext_proc BUFFERED request bodies); send it without trailers",
            )
        if self._routed is None:
            yield from self._route(end_of_stream=False)
            if self._request_mode == FULL_DUPLEX:
                # The replacing reply (_replacing_response) ended Envoy's processing of the
                # request: an answer to the trailers now would be a spurious message to it.
                return
        yield ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())

    def _replacing_response(
        self, streaming: bool, rewritten: bytes | None, body: bytes
    ) -> ext_proc.ProcessingResponse:
        """A FULL_DUPLEX_STREAMED request that ended with trailers, routed: the headers reply
        with the whole body, CONTINUE_AND_REPLACE. Streamed body replies then a trailers reply
        reach the model server twice through Envoy 1.40 with a retry policy (envoyproxy/envoy
        #45470): the router keeps the injected body for retries in the stream's buffer, and the
        trailers reply resumes the paused chain, which sends that buffer on again. A replacing
        headers reply puts the body in that buffer itself, once, and resumes the chain with it
        and the trailers; Envoy then sends nothing more of the request and awaits no reply to
        the trailers."""
        response = self._routing_response("request_headers", streaming, rewritten)
        common = response.request_headers.response
        common.status = ext_proc.CommonResponse.CONTINUE_AND_REPLACE
        common.body_mutation.body = body
        return response

    def _route(self, end_of_stream: bool) -> Iterator[ext_proc.ProcessingResponse]:
        if self._refusal is not None:
            raise self._refusal  # already counted by the director
        raw = bytes(self._body)
        if raw:
            prepared, self._prepared = self._prepared, None
            self._routed = self._director.handle_body(raw, self._headers, self._subset, self._trace, prepared)
        else:
            # Headers without end_of_stream, then an empty body or only trailers (an HTTP/2
            # client's empty DATA frame, or its trailers, ends the stream): no body, so routed as
            # a request that ended at its headers (GET /v1/models gets an endpoint, a POST to an
            # inference API the bodyless 400), not parsed as an empty JSON document.
            self._routed = self._director.handle_bodyless(self._headers, self._subset)
        self._processed()
        eviction = self._routed.eviction
        if eviction is not None and eviction.evictable:
            self.eviction_signal = eviction.signal
        rewritten = self._routed.body
        body = rewritten if rewritten is not None else raw
        streaming = self._routed.request.stream
        if self._request_mode == FULL_DUPLEX and self._trailers_seen:
            yield self._replacing_response(streaming, rewritten, body)
        elif self._request_mode == FULL_DUPLEX:
            yield self._routing_response("request_headers", streaming, rewritten)
            yield from messages.streamed_body(body, end_of_stream, request=True)
        else:
            response = self._routing_response("request_body", streaming, rewritten)
            if rewritten is not None:
                response.request_body.response.body_mutation.body = rewritten
            yield response

    def _routing_response(
        self, reply: str, streaming: bool, new_body: bytes | None = None
    ) -> ext_proc.ProcessingResponse:
        """The routed reply: destination and the director's headers set, a client's copies of the
        EPP's own headers removed, content-length for a rewritten body."""
        assert self._routed is not None
        destination = self._routed.destination
        set_headers = {DESTINATION_HEADER: destination, **self._routed.headers}
        if self._generated_request_id:
            set_headers[REQUEST_ID_HEADER] = self._generated_request_id
        if new_body is not None:
            set_headers["content-length"] = str(len(new_body))
        remove = [h for h in OWNED_HEADERS if h in self._headers and h not in set_headers]
        scores = None
        if self._options.emit_endpoint_scores:
            result = self._routed.result
            primary = result.profile_results.get(result.primary_profile)
            scores = primary.scores if primary is not None else None
        group = self._routed.result.targets[0].fallback_group_for(self._routed.request.target_model)
        return messages.routing_response(reply, set_headers, remove, destination, streaming, group, scores)

    # --- response path -------------------------------------------------------------------------

    def _response_headers(
        self, headers: ext_proc.HttpHeaders, metadata: dict[str, dict[str, Any]]
    ) -> Iterator[ext_proc.ProcessingResponse]:
        """`metadata`: the data plane's, by namespace. The endpoint that served comes as GIE's
        `envoy.lb` metadata key, or (our bootstrap: Envoy 1.40 cannot set that metadata) as a
        response header of the same name; plugins see it as the metadata either way."""
        response_headers = messages.read_headers(headers)
        event_stream = "text/event-stream" in response_headers.get("content-type", "")
        if self._routed is not None:
            lb = metadata.get(LB_NAMESPACE, {})
            served = lb.get(SERVED_KEY) or response_headers.get(SERVED_KEY)
            if isinstance(served, str) and served:
                self._routed.served_by(served)
                if SERVED_KEY not in lb:
                    metadata = {**metadata, LB_NAMESPACE: {**lb, SERVED_KEY: served}}
            status_text = response_headers.get(":status", "")
            status = int(status_text) if status_text.isdigit() else 0
            self._routed.response_started(status, event_stream, metadata)
            if self._trace is not None:
                self._trace.response_started(status)
        response = ext_proc.ProcessingResponse()
        reply = response.response_headers
        reply.SetInParent()
        # The gateway's report is for the EPP: clients need not learn pod addresses from it.
        removed = (SERVED_KEY,) if SERVED_KEY in response_headers else ()
        added = dict(self._routed.result.response_headers) if self._routed is not None else {}
        if self._routed is not None and self._options.served_header:
            added[self._options.served_header] = self._routed.destination
        if added or removed:
            messages.fill_header_mutation(reply.response.header_mutation, added, removed)
        if event_stream and self._skip_streamed_body():
            response.mode_override.CopyFrom(SKIP_RESPONSE_BODY)
            self.only_end_left = not headers.end_of_stream
        yield response
        if headers.end_of_stream:
            self._finish()

    def _skip_streamed_body(self) -> bool:
        """Whether to ask Envoy to stop sending this SSE response's chunks. A Python EPP answering
        every token's chunk would spend most of its CPU there; the request's end is then the
        stream's end. Envoy honours the override only with `allow_mode_override` and not in
        FULL_DUPLEX_STREAMED mode; a restored model name and ResponseStreaming plugins need the
        chunks."""
        if self._options.read_streamed_responses or self._response_mode == FULL_DUPLEX:
            return False
        return self._routed is None or not (self._routed.rewrites_model or self._routed.reads_response_chunks)

    def _response_body(self, body: ext_proc.HttpBody) -> Iterator[ext_proc.ProcessingResponse]:
        original = chunk = body.body
        if self._routed is not None:
            self._routed.response_body(original, body.end_of_stream)
            chunk = self._routed.restore_model(original)
        replies: list[ext_proc.ProcessingResponse]
        if self._response_mode == FULL_DUPLEX:
            replies = list(messages.streamed_body(chunk, body.end_of_stream, request=False))
        elif chunk is not original:
            mutation = ext_proc.CommonResponse(body_mutation=ext_proc.BodyMutation(body=chunk))
            if self._response_mode == BUFFERED:
                # Envoy rejects a buffered body mutation whose length disagrees with the headers.
                length = messages.header_mutation({"content-length": str(len(chunk))}, ())
                mutation.header_mutation.CopyFrom(length)
            replies = [ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse(response=mutation))]
        else:
            replies = [ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())]
        if body.end_of_stream and self._routed is not None and self._routed.response_metadata:
            replies[-1].dynamic_metadata.update(self._routed.response_metadata)
        yield from replies
        if body.end_of_stream:
            self._finish()

    def _response_trailers(self) -> Iterator[ext_proc.ProcessingResponse]:
        """A response that ends with trailers (an HTTP/2 or gRPC model server's) ended whole, its
        last chunk not marked as the end: its body ends here, as llm-d's stream ends it at the
        trailers (its latencies recorded, the ResponseBody plugins told)."""
        reply = ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())
        if self._routed is not None:
            self._routed.response_body(b"", end_of_stream=True)
            if self._routed.response_metadata:
                reply.dynamic_metadata.update(self._routed.response_metadata)
        yield reply
        self._finish()

    def _finish(self) -> None:
        self._release()  # the response's cost is observed at close(), this message's included
        self.done = True
        self.eviction_signal = None

    def _processed(self) -> None:
        """The request is handled (routed, or refused before it was): its processing time since
        its headers, observed once; a refusal of its response later is not the request's. A
        routed request keeps its arrival for its response's latencies."""
        if self._routed is not None:
            self._routed.arrived = self._arrived
        if self._received is not None:
            self._director.metrics.request_processing.observe(time.monotonic() - self._received)
            self._received = None

    def _reject(
        self, error: RequestError, headers: dict[str, str] | None = None
    ) -> ext_proc.ProcessingResponse:
        self._processed()
        self.done = True
        self.eviction_signal = None
        if self._trace is not None:
            self._trace.failed(f"{error.status} {error.message}")
        return messages.immediate_error(error, self._options.error_prefix, headers)

    # --- in-flight eviction --------------------------------------------------------------------

    def evicted(self) -> ext_proc.ProcessingResponse:
        """Flow control took the request back: the client gets llm-d router's 429 at once, and the
        gateway drops the upstream request."""
        log.info("request %s evicted by flow control", self._headers.get(REQUEST_ID_HEADER, ""))
        error = RequestError(ErrorCode.RESOURCE_EXHAUSTED, EVICTED_MESSAGE)
        return self._reject(error, {DROPPED_REASON_HEADER: DROPPED_REASON_EVICTED})
