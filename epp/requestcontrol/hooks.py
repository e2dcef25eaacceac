"""Request-control extension points and their dispatch: plugins called around a scheduled
request (before it is forwarded, when its response starts, when it ends) and the request parser.

`RequestControlHooks` calls every hook plugin for every request in config order, timing each
into `inference_extension_plugin_duration_seconds`."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from time import perf_counter
from typing import Any, ClassVar, cast

from epp.datastore import Endpoint
from epp.framework import Extension, Plugin, timing
from epp.metrics.exporter import EppMetrics
from epp.requests import InferenceRequest, Usage
from epp.requests.usage import UsageReader
from epp.scheduling.types import SchedulingResult

log = logging.getLogger(__name__)

# Request attribute holding an agent session's identity (llm-d's `agent-identity` plugin); the
# director uses it as the fairness id when the request names none.
AGENT_IDENTITY = "agent-identity"
# Request attribute set when the response headers arrive: whether the model server streams the
# response as server-sent events (llm-d's StartOfStream exists only for such responses).
RESPONSE_EVENT_STREAM = "response-event-stream"
# Request attribute set when the response ends: the id of the Responses API response the model
# server made (as its answer or its stream's events say), for plugins that route follow-ups.
RESPONSE_ID = "response-id"
# Request attribute set when the gateway reports which endpoint served (after its retries), before
# the ResponseReceived plugins run: that Endpoint, or None when it is not in the pool.
SERVED_ENDPOINT = "served-endpoint"


class RequestHeaderProcessor(Extension):
    @abstractmethod
    def request_headers(self, request: InferenceRequest) -> None:
        """The request is parsed, before admission: derive attributes from its headers."""


class AdmitRequest(Extension):
    """GIE's AdmitRequest point (its AdmissionPlugin): asked once per parsed request with the
    candidate endpoints, before flow control's queue (when flow control is on) and before
    scheduling. Returning admits; raising RequestError (status, message, Retry-After) refuses."""

    @abstractmethod
    def admit_request(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None: ...


class Screener(Extension):
    """llm-d's Screener point: narrows the located candidates once per request, before admission,
    data producers and every scheduling profile, so no later filter can undo it. Every screener
    sees the same input; the director keeps the endpoints all of them keep (none: 503)."""

    @abstractmethod
    def screen(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> Sequence[Endpoint]: ...


class PreRequest(Extension):
    @abstractmethod
    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        """After scheduling, before the request is forwarded."""


class ResponseReceived(Extension):
    @abstractmethod
    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None:
        """The model server's response headers arrived."""


class ResponseHeaderProcessor(Extension):
    @abstractmethod
    def response_headers(
        self,
        request: InferenceRequest,
        result: SchedulingResult,
        metadata: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """The model server's response headers arrived, with the data plane's metadata for the
        response (`metadata[namespace][key]`, e.g. envoy.lb's served endpoint); headers to add to
        the client's response go into `result.response_headers` (GIE's ResponseHeader plugins)."""


class ResponseStreaming(Extension):
    """GIE's and llm-d's ResponseStreaming point: each response body chunk before the last, as
    the data plane hands it over. The EPP then asks Envoy for a streamed (SSE) response's chunks
    instead of skipping them, so a chunk per token costs a message each."""

    # False: this instance needs no chunks (a plugin whose configuration does not use them), so it
    # is not called and does not make the EPP ask for them.
    reads_response_chunks: bool = True

    @abstractmethod
    def response_streaming(self, request: InferenceRequest, result: SchedulingResult, chunk: bytes) -> None:
        """A chunk of the response body arrived; more follow."""


class ResponseBodyReader(Extension):
    """Needs the response body of some requests to pass through the EPP even when the model server
    streams it (SSE), which the EPP otherwise asks the gateway to skip: what it needs is read by
    the EPP's response reader (usage, and the `RESPONSE_ID` attribute). Each streamed chunk then
    costs an ext_proc message, so a plugin asks only for the requests it needs."""

    @abstractmethod
    def reads_response_body(self, request: InferenceRequest) -> bool: ...


class BodylessRouter(Extension):
    """Knows where some requests that end at their headers must go (GET /v1/responses/{id} and
    its cancel: the replica holding that response); the others go to any ready endpoint."""

    @abstractmethod
    def bodyless_target(self, request: InferenceRequest, endpoints: Sequence[Endpoint]) -> Endpoint | None:
        """The endpoint among `endpoints` this request must reach, or None: no preference."""

    def bodyless_wait(self, request: InferenceRequest) -> Awaitable[None] | None:
        """What to await before `bodyless_target` is asked for this request (e.g. the endpoint of
        the response it names, not yet shared by the replica that learned it; bounded, never
        raising), or None, the default: nothing, ask at once."""
        return None


class ResponseBodyProcessor(Extension):
    @abstractmethod
    def response_body_done(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> Mapping[str, Mapping[str, Any]]:
        """The response body ended (as seen by the EPP) with this usage; the answer is dynamic
        metadata for the gateway (`{namespace: {key: value}}`), sent with the body's last reply
        (GIE's ResponseBody plugins)."""


class ResponseComplete(Extension):
    @abstractmethod
    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        """The response ended, however it ended (once per scheduled request)."""


class RequestParser(Extension):
    """Turns a request body into an InferenceRequest (GIE's and llm-d's parser plugins). `paths`
    are the path suffixes it claims when several parsers are configured (llm-d router's
    `requestHandler.parsers`); a parser claiming none is the fallback."""

    paths: ClassVar[tuple[str, ...]] = ()
    # Whether the director may re-serialise `request.body` as JSON (model rewrites): not for a
    # body the parser only unwrapped (gRPC envelopes).
    rewrites_body: ClassVar[bool] = True

    @abstractmethod
    def parse(self, raw: bytes, path: str, headers: dict[str, str], request_id: str) -> InferenceRequest:
        """Parse the body; raise RequestError (400) for input this parser refuses."""

    def usage_reader(self, streaming: bool) -> UsageReader:
        """Reads token usage from this API's responses (OpenAI's shapes unless overridden)."""
        return UsageReader(streaming)


def effective_parsers(parsers: Sequence[Any]) -> list[Any]:
    """As llm-d router's ParserRegistry: a second parser of a type already listed is skipped, and so
    is every parser after the first one that claims no path (the fallback ends the list)."""
    kept: list[Any] = []
    types: set[str] = set()
    for parser in parsers:
        if parser.type_name in types:
            continue
        types.add(parser.type_name)
        kept.append(parser)
        if not parser.paths:
            break
    return kept


_MAX_RESOLVED_PATHS = 1024


class Parsers:
    """The configured parsers, resolved per request path as llm-d router's ParserRegistry: the
    parser claiming the longest matching path suffix, else the fallback (a parser claiming no
    path). With no match and no fallback the first parser parses everything, as GIE's single
    `parser` does."""

    def __init__(self, parsers: Sequence[RequestParser]) -> None:
        if not parsers:
            raise ValueError("at least one parser is needed")
        self.parsers = tuple(effective_parsers(parsers))
        fallback = [p for p in self.parsers if not p.paths]
        self._fallback = fallback[0] if fallback else self.parsers[0]
        # Each path's parser, as clients send few distinct paths (bounded: a path is the client's).
        self._resolved: dict[str, RequestParser] = {}

    def resolve(self, path: str) -> RequestParser:
        parser = self._resolved.get(path)
        if parser is None:
            if len(self._resolved) >= _MAX_RESOLVED_PATHS:
                self._resolved.clear()
            parser = self._resolved[path] = self._longest_suffix(path)
        return parser

    def _longest_suffix(self, path: str) -> RequestParser:
        clean = path.split("?", 1)[0].strip().rstrip("/")
        best: RequestParser | None = None
        longest = 0
        for parser in self.parsers:
            for suffix in parser.paths:
                suffix = suffix.strip().strip("/")
                if clean.endswith(suffix) and len(suffix) > longest:
                    best, longest = parser, len(suffix)
        return best or self._fallback


class RequestControlHooks:
    """The configured hook plugins, in config order."""

    def __init__(self, plugins: Sequence[Plugin], metrics: EppMetrics) -> None:
        def timed(role: type, point: str) -> list[tuple[Any, timing.Observe]]:
            """The plugins taking `role`, each with its latency observer bound once."""
            chosen = [p for p in plugins if isinstance(p, role)]
            if role is ResponseStreaming:
                chosen = [p for p in chosen if cast(ResponseStreaming, p).reads_response_chunks]
            return [(p, timing.observer(metrics, point, cast(Extension, p))) for p in chosen]

        self._request_headers = timed(RequestHeaderProcessor, timing.REQUEST_HEADER)
        self._admit = timed(AdmitRequest, timing.ADMIT_REQUEST)
        self._screen = timed(Screener, timing.SCREENER)
        self._pre_request = timed(PreRequest, timing.PRE_REQUEST)
        self._response_received = timed(ResponseReceived, timing.RESPONSE_RECEIVED)
        self._response_headers = timed(ResponseHeaderProcessor, timing.RESPONSE_RECEIVED)
        self._response_streaming = timed(ResponseStreaming, timing.RESPONSE_STREAMING)
        self._response_body = timed(ResponseBodyProcessor, timing.RESPONSE_COMPLETE)
        self._body_readers = [p for p in plugins if isinstance(p, ResponseBodyReader)]
        self._bodyless_routers = [p for p in plugins if isinstance(p, BodylessRouter)]
        self._response_complete = timed(ResponseComplete, timing.RESPONSE_COMPLETE)

    def request_headers(self, request: InferenceRequest) -> None:
        for plugin, observe in self._request_headers:
            started = perf_counter()
            try:
                plugin.request_headers(request)
            finally:
                observe(perf_counter() - started)

    def admit(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        """Raise the first AdmitRequest plugin's refusal."""
        for plugin, observe in self._admit:
            started = perf_counter()
            try:
                plugin.admit_request(request, candidates)
            finally:
                observe(perf_counter() - started)

    def screen(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        """The candidates every Screener keeps, in their order."""
        kept = candidates
        for plugin, observe in self._screen:
            started = perf_counter()
            allowed = {id(e) for e in plugin.screen(request, candidates)}
            observe(perf_counter() - started)
            kept = [e for e in kept if id(e) in allowed]
        return kept

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        for plugin, observe in self._pre_request:
            started = perf_counter()
            plugin.pre_request(request, result)
            observe(perf_counter() - started)

    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None:
        for plugin, observe in self._response_received:
            started = perf_counter()
            plugin.response_received(request, result)
            observe(perf_counter() - started)

    def response_headers(
        self, request: InferenceRequest, result: SchedulingResult, metadata: Mapping[str, Mapping[str, Any]]
    ) -> None:
        for plugin, observe in self._response_headers:
            started = perf_counter()
            plugin.response_headers(request, result, metadata)
            observe(perf_counter() - started)

    def reads_response_body(self, request: InferenceRequest) -> bool:
        """Whether a ResponseStreaming plugin, or a ResponseBodyReader for this request, wants
        its streamed response's chunks."""
        return bool(self._response_streaming) or any(
            p.reads_response_body(request) for p in self._body_readers
        )

    def bodyless_target(self, request: InferenceRequest, endpoints: Sequence[Endpoint]) -> Endpoint | None:
        """The first BodylessRouter's endpoint for a request without a body, if one names one."""
        for plugin in self._bodyless_routers:
            target = plugin.bodyless_target(request, endpoints)
            if target is not None:
                return target
        return None

    @property
    def routes_bodyless(self) -> bool:
        """Whether a BodylessRouter is configured (only then may a bodyless request wait)."""
        return bool(self._bodyless_routers)

    async def bodyless_wait(self, request: InferenceRequest) -> None:
        """Await what every BodylessRouter waits for before it is asked for this request."""
        for plugin in self._bodyless_routers:
            waiting = plugin.bodyless_wait(request)
            if waiting is not None:
                await waiting

    def response_streaming(self, request: InferenceRequest, result: SchedulingResult, chunk: bytes) -> None:
        """Each plugin hears every chunk even if one before it fails (it may act on the first)."""
        _each_despite_errors(
            self._response_streaming, "ResponseStreaming", "response_streaming", request, result, chunk
        )

    def response_body_done(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> dict[str, dict[str, Any]]:
        metadata: dict[str, dict[str, Any]] = {}
        for plugin, observe in self._response_body:
            started = perf_counter()
            for namespace, values in plugin.response_body_done(request, result, usage).items():
                metadata.setdefault(namespace, {}).update(values)
            observe(perf_counter() - started)
        return metadata

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        """Each plugin hears it even if one before it fails: what it holds for the request (pins,
        in-flight counts) would otherwise never be released."""
        _each_despite_errors(
            self._response_complete, "ResponseComplete", "response_complete", request, result, usage
        )


def _each_despite_errors(
    plugins: Sequence[tuple[Any, Callable[[float], None]]], point: str, hook: str, *args: Any
) -> None:
    """Call `hook` on every plugin of extension `point`, timing each; one that raises is logged
    and the others go on."""
    for plugin, observe in plugins:
        started = perf_counter()
        try:
            getattr(plugin, hook)(*args)
        except Exception:
            log.exception("%s plugin %s failed; the others go on", point, plugin.name)
        observe(perf_counter() - started)
