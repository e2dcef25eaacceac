"""The director turns a parsed request into a routing decision and keeps load accounting exact."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from epp.datalayer import AsyncDataProducer
from epp.datastore import Datastore, Endpoint
from epp.datastore.endpoint import canonical_hostport, split_host_port
from epp.explain import DecisionRecord, DecisionRecorder, clip
from epp.explain.records import PROMPT_LIMIT
from epp.flowcontrol import Admission, AdmitAll
from epp.flowcontrol.controller import FlowController, bound_fairness_id
from epp.flowcontrol.eviction import EvictionItem
from epp.headers import (
    EXPLAIN_HEADER,
    EXPLANATION_HEADER,
    FAIRNESS_HEADER,
    LLMD_FAIRNESS_HEADER,
    LLMD_MODEL_REWRITE_HEADER,
    LLMD_OBJECTIVE_HEADER,
    MODEL_REWRITE_HEADER,
    OBJECTIVE_HEADER,
    REQUEST_ID_HEADER,
    either_header,
)
from epp.metrics.exporter import EppMetrics
from epp.metrics.flow_requests import FlowSeries
from epp.metrics.latency import ResponseTiming
from epp.requestcontrol.hooks import (
    AGENT_IDENTITY,
    RESPONSE_EVENT_STREAM,
    RESPONSE_ID,
    SERVED_ENDPOINT,
    Parsers,
    RequestControlHooks,
)
from epp.requestcontrol.model_rewrite import ModelRewrites
from epp.requests import DEFAULT_FAIRNESS_ID, ApiKind, ErrorCode, InferenceRequest, RequestError, Usage
from epp.requests.jsontext import dumps
from epp.requests.parser import api_kind, parse_request
from epp.requests.usage import UsageReader
from epp.scheduling.types import (
    PREFILL_PROFILE,
    ProfileResult,
    Scheduler,
    SchedulingError,
    SchedulingResult,
)

if TYPE_CHECKING:
    from epp.tracing.spans import RequestTrace

log = logging.getLogger(__name__)

SUSPEND_SECONDS = 10
_NO_SPAN = contextlib.nullcontext()  # stands for a span when tracing is off (reusable)


class RoutedRequest:
    """A scheduled request until its response ends. `finish` is idempotent, so every way a stream
    can end (normal end, error, client disconnect) releases the in-flight count exactly once."""

    __slots__ = (
        "_charged_tokens",
        "_director",
        "_finished",
        "_first_byte_at",
        "_last_chunk_at",
        "_model_swap",
        "_streaming",
        "_timing",
        "_usage",
        "arrived",
        "body",
        "eviction",
        "flow",
        "loaded",
        "record",
        "request",
        "response_bytes",
        "response_metadata",
        "response_status",
        "result",
        "served",
        "started",
        "usage_reader",
    )

    def __init__(self, director: Director, request: InferenceRequest, result: SchedulingResult) -> None:
        self._director = director
        self.request = request
        self.result = result
        self.started = time.monotonic()
        # When the request's headers reached the EPP (the ext_proc stream sets it): llm-d's
        # response latencies count from there. None: not known, none recorded.
        self.arrived: float | None = None
        # llm-d's `streaming`: the request asked for a stream (its `stream` field) or the
        # response is an event stream; set when the response starts.
        self._streaming = False
        self._first_byte_at: float | None = None
        self._last_chunk_at = 0.0
        self._timing: ResponseTiming | None = None
        self.response_status: int | None = None
        self.response_bytes = 0
        # Dynamic metadata the response-body plugins return when the body ends.
        self.response_metadata: dict[str, dict[str, Any]] = {}
        self.served: Endpoint | None = None  # when the gateway says so
        self.body: bytes | None = None
        self.record: DecisionRecord | None = None
        self._usage: UsageReader | None = None
        # How this request's responses report usage (the parser's API; OpenAI's by default).
        self.usage_reader: Callable[[bool], UsageReader] = UsageReader
        self._finished = False
        self._model_swap = _model_swap(request.target_model, request.model)
        self.loaded = result.first_targets()
        # Tracked for flow control's in-flight eviction (None: not tracked, eviction off).
        self.eviction: EvictionItem | None = None
        # llm-d's per-request children for its model and flow (None: llm-d's names off).
        self.flow: FlowSeries | None = None
        self._charged_tokens = request.prompt_tokens
        for endpoint in self.loaded:
            endpoint.inflight_requests += 1
            endpoint.inflight_tokens += self._charged_tokens

    @property
    def destination(self) -> str:
        return self.result.destination

    @property
    def headers(self) -> dict[str, str]:
        return self.result.headers

    def response_started(
        self, status: int, event_stream: bool, metadata: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        """Response headers arrived; `metadata` is what the data plane sent with them."""
        self.response_status = status
        self._streaming = event_stream or self.request.stream
        self.request.attributes[RESPONSE_EVENT_STREAM] = event_stream
        self._usage = self.usage_reader(event_stream or self.request.stream)
        with _PluginErrorsLogged("ResponseReceived"):
            self._director.hooks.response_received(self.request, self.result)
        with _PluginErrorsLogged("ResponseHeader"):
            self._director.hooks.response_headers(self.request, self.result, metadata or {})
        if status == 503:
            answered = [self.served] if self.served is not None else self.result.targets[:1]
            self._director.note_upstream_unavailable(answered)

    def response_body(self, chunk: bytes, end_of_stream: bool) -> None:
        self.response_bytes += len(chunk)
        if chunk and self.arrived is not None and self.request.model:
            self._chunk_timed()
        if self._usage is None:
            self._usage = self.usage_reader(self.request.stream)
        self._usage.feed(chunk, end_of_stream)
        if chunk and not end_of_stream and not self._finished:
            with _PluginErrorsLogged("ResponseStreaming"):
                self._director.hooks.response_streaming(self.request, self.result, chunk)
        if end_of_stream:
            if not self._finished:
                self._response_timed(self._usage.usage)
                with _PluginErrorsLogged("ResponseBody"):
                    self.response_metadata = self._director.hooks.response_body_done(
                        self.request, self.result, self._usage.usage
                    )
            self.finish()

    def _chunk_timed(self) -> None:
        """A response byte came: the first one's time kept, and for a streamed response the gap
        since the chunk before (llm-d's inter-token latency)."""
        now = time.monotonic()
        if self._first_byte_at is None:
            self._first_byte_at = now
        elif self._streaming:
            self._timings().itl(now - self._last_chunk_at)
        self._last_chunk_at = now

    def _response_timed(self, usage: Usage | None) -> None:
        """The response ended whole: its time to first token and, streamed, its time per output
        token after the first (llm-d records both only at the response's end)."""
        first, arrived = self._first_byte_at, self.arrived
        if first is None or arrived is None or first <= arrived:  # no byte timed (or no model)
            return
        timing = self._timings()
        timing.ttft(first - arrived)
        tokens = usage.completion_tokens if usage is not None else 0
        end = time.monotonic()
        if self._streaming and tokens > 1 and end > first:
            timing.tpot((end - first) / (tokens - 1))

    def _timings(self) -> ResponseTiming:
        timing = self._timing
        if timing is None:
            metrics, request = self._director.metrics, self.request
            series = metrics.series(request.model, request.target_model)
            fairness, priority = metrics.flow_control.flow_labels(request.fairness_id, request.priority)
            labels = (series.model_label, series.target_label, fairness, priority)
            timing = self._timing = metrics.latencies.timing(labels, self._streaming)
        return timing

    def served_by(self, hostport: str) -> None:
        """The gateway says which endpoint served, after its retries. Not the primary: the listed
        endpoints tried before it failed (refused, reset, 503, no first byte in time) and are
        suspended, and the primary's load moves to the one that serves. The gateway names the
        address it was sent to: an entry of the destination, which for data-parallel routing is
        the pod's primary port, not the rank picked (`SchedulingResult.destination_port`)."""
        hostport = canonical_hostport(hostport)  # as the destination was written
        targets = self.result.targets
        listed = self.result.destination.split(",") if targets else []
        at = listed.index(hostport) if hostport in listed else None
        served = targets[at] if at is not None else self._director.endpoint_at(hostport)
        self.served = self.request.attributes[SERVED_ENDPOINT] = served
        if at == 0 or self._finished or not targets:
            return
        tried = targets[:at] if at is not None else targets
        self._director.note_upstream_unavailable(tried, f"the gateway retried on {hostport}")
        primary = targets[0]
        if primary not in self.loaded:
            return
        primary.inflight_requests -= 1
        primary.inflight_tokens -= self._charged_tokens
        self.loaded = [e for e in self.loaded if e is not primary]
        if served is not None and served not in self.loaded:
            served.inflight_requests += 1
            served.inflight_tokens += self._charged_tokens
            self.loaded.append(served)

    @property
    def reads_response_chunks(self) -> bool:
        """Whether a plugin wants this response's chunks."""
        return self._director.hooks.reads_response_body(self.request)

    @property
    def rewrites_model(self) -> bool:
        return self._model_swap is not None

    def restore_model(self, chunk: bytes) -> bytes:
        """Give the client back the model name it asked for when the EPP rewrote it upstream
        (GIE's textual replacement; a name split across two chunks is left as is)."""
        if self._model_swap is None:
            return chunk
        for upstream, client in self._model_swap:
            if upstream in chunk:
                return chunk.replace(upstream, client)
        return chunk

    def finish(self) -> None:
        """Release the load, record the metrics, then tell the plugins: a failing plugin must not
        keep an endpoint loaded or a response from finishing."""
        if self._finished:
            return
        self._finished = True
        for endpoint in self.loaded:
            endpoint.inflight_requests -= 1
            endpoint.inflight_tokens -= self._charged_tokens
        usage = self._usage.usage if self._usage else None
        if self._usage is not None and self._usage.response_id is not None:
            self.request.attributes[RESPONSE_ID] = self._usage.response_id
        self._director.finished(self, usage)


class _PluginErrorsLogged:
    """Response-path hooks only learn from traffic: a failing one is logged and the response goes
    on (GIE does the same); a failure on the request path is the request's 500 instead. A class
    rather than a generator context manager: entered three times a request, 0.6 against 2.7 us."""

    __slots__ = ("_extension_point",)

    def __init__(self, extension_point: str) -> None:
        self._extension_point = extension_point

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
        if kind is None or not issubclass(kind, Exception):
            return False
        log.exception("a %s plugin failed; the response continues", self._extension_point)
        return True


def _model_swap(target: str, incoming: str) -> tuple[tuple[bytes, bytes], ...] | None:
    if not target or not incoming or target == incoming:
        return None
    return tuple(
        (
            f'"model":{sep}{orjson.dumps(target).decode()}'.encode(),
            f'"model":{sep}{orjson.dumps(incoming).decode()}'.encode(),
        )
        for sep in ("", " ")
    )


@dataclass(slots=True)
class ParsedBody:
    """A request body parsed (and prepared) ahead of routing, and how its usage will be read."""

    request: InferenceRequest | None = None
    usage_reader: Callable[[bool], UsageReader] = UsageReader
    # The AdmitRequest plugins already admitted it (before flow control's queue).
    admitted: bool = False
    # Whether the parser lets the director re-serialise the body (RequestParser.rewrites_body).
    rewritable: bool = True


class Director:
    def __init__(
        self,
        datastore: Datastore,
        scheduler: Scheduler,
        hooks: RequestControlHooks | None = None,
        admission: Admission | None = None,
        objectives: Mapping[str, int] | None = None,
        metrics: EppMetrics | None = None,
        rng: random.Random | None = None,
        parsers: Parsers | None = None,
        async_producers: Sequence[AsyncDataProducer] = (),
        flow_control: FlowController | None = None,
    ) -> None:
        self.datastore = datastore
        self.parsers = parsers
        self.async_producers = list(async_producers)
        # GIE's flow-control layer: requests wait in its queues (prepare_body) before routing.
        self.flow_control = flow_control
        self.scheduler = scheduler
        self.admission = admission or AdmitAll()
        self.objectives: Mapping[str, int] = objectives or {}
        self.model_rewrites = ModelRewrites(rng=rng)
        self.metrics = metrics or EppMetrics()
        self.hooks = hooks or RequestControlHooks((), self.metrics)
        self._rng = rng or random.Random()
        # Decision records (set by `epp serve`); None: none kept.
        self.recorder: DecisionRecorder | None = None
        # Set by `epp serve` when a standby must not route (llm-d's haPopulateNonLeaderDatastore=false).
        self.standby: Callable[[], bool] | None = None
        self._pd_pool = PREFILL_PROFILE in getattr(scheduler, "profiles", ())

    # --- entry points from the protocol layer --------------------------------------------------

    def handle_body(
        self,
        raw: bytes,
        headers: dict[str, str],
        subset: Sequence[str] | None,
        trace: RequestTrace | None = None,
        prepared: ParsedBody | None = None,
    ) -> RoutedRequest:
        """Parse a complete request body and route it. Raises RequestError for every refusal,
        after counting it. `prepared`: what `prepare_body` already parsed (and its async data
        producers prepared)."""
        parsed = prepared or ParsedBody()
        try:
            if prepared is None:
                self._parse_body(raw, headers, trace, parsed)
            request = parsed.request
            assert request is not None
            body: bytes | None = None
            if request.target_model != request.model or (request.body_changed and parsed.rewritable):
                # Written before scheduling: whatever fails here must fail with no load taken.
                body = dumps(request.body)
            routed = self.route(request, subset, trace, admitted=parsed.admitted)
            routed.usage_reader = parsed.usage_reader
        except RequestError as error:
            self.record_error(error, parsed.request)
            raise
        routed.body = body
        return routed

    def _parse_body(
        self, raw: bytes, headers: dict[str, str], trace: RequestTrace | None, parsed: ParsedBody
    ) -> None:
        """Parse into `parsed` (the request as soon as it parses, so a later refusal is counted
        under its model) and apply the gateway's headers: objective, fairness, model rewrite."""
        path, request_id = headers.get(":path", ""), headers.get(REQUEST_ID_HEADER, "")
        rewritable = True
        with _NO_SPAN if trace is None else trace.step("epp.parse"):
            if self.parsers is None:
                request = parse_request(raw, path, headers, request_id)
            else:
                parser = self.parsers.resolve(path)
                request = parser.parse(raw, path, headers, request_id)
                parsed.usage_reader, rewritable = parser.usage_reader, parser.rewrites_body
        parsed.request = request
        parsed.rewritable = rewritable
        request.objective = either_header(headers, LLMD_OBJECTIVE_HEADER, OBJECTIVE_HEADER) or ""
        request.priority = self.objectives.get(request.objective, 0)
        self.hooks.request_headers(request)
        agent = request.attributes.get(AGENT_IDENTITY)
        request.fairness_id = bound_fairness_id(
            either_header(headers, LLMD_FAIRNESS_HEADER, FAIRNESS_HEADER)
            or (agent if agent else request.fairness_id)
        )
        # A body the parser did not read (no model) is forwarded unchanged.
        rewrite = (
            self._target_model(
                request.model, either_header(headers, LLMD_MODEL_REWRITE_HEADER, MODEL_REWRITE_HEADER)
            )
            if request.model and rewritable
            else None
        )
        if rewrite and rewrite != request.model:
            request.target_model = rewrite
            request.body["model"] = rewrite

    def _target_model(self, model: str, header: str | None) -> str | None:
        """An InferenceModelRewrite rule for the model wins over the rewrite header, as in GIE."""
        if self.model_rewrites:
            chosen = self.model_rewrites.choose(model)
            if chosen is not None:
                rewrite_name, target = chosen
                self.metrics.model_rewritten(rewrite_name, model, target)
                return target
        return header

    @property
    def prepares_async(self) -> bool:
        """Whether requests need the awaited `prepare_body` before `handle_body`: flow control's
        queue or an async data producer is configured."""
        return self.flow_control is not None or any(p.awaits_requests for p in self.async_producers)

    async def prepare_body(
        self,
        raw: bytes,
        headers: dict[str, str],
        trace: RequestTrace | None = None,
        subset: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> ParsedBody | None:
        """The awaited step between a complete body and its routing, parsing it once. With flow
        control on: the AdmitRequest plugins, then the wait in the flow's queue until dispatched
        (`deadline`: the caller's seconds remaining). Then the async data producers
        (tokenization through the model server). Flow control comes first: a queued request may
        be rejected, evicted or time out, and tokenizing it beforehand would spend a render round
        trip on it for nothing (and on a request held back because the pool is saturated); the
        producers' data (prefix-cache blocks) is also fresher at dispatch.

        None when the body does not parse: `handle_body` then refuses it as usual, and counts it
        once. Raises RequestError (counted) for every admission and flow-control refusal."""
        parsed = ParsedBody()
        try:
            self._parse_body(raw, headers, trace, parsed)
        except RequestError:
            return None
        request = parsed.request
        assert request is not None
        if self.flow_control is not None:
            try:
                # The AdmitRequest plugins before the queue, with the candidates: a request they
                # refuse (a token budget spent) does not wait first. With no candidate yet (an
                # empty pool) the request queues until one comes, and they are asked at routing.
                try:
                    candidates = self.candidates(request, subset)
                except RequestError:
                    candidates = None
                if candidates is not None:
                    with _NO_SPAN if trace is None else trace.step("epp.admission"):
                        self.hooks.admit(request, candidates)
                    parsed.admitted = True
                with _NO_SPAN if trace is None else trace.step("epp.flow_control"):
                    await self.flow_control.enqueue_and_wait(request, deadline)
            except RequestError as error:
                self.record_error(error, request)
                raise
        producers = [p for p in self.async_producers if p.awaits_requests]
        if not producers:
            return parsed
        # Dispatched, not routed until the producers finish (routing follows on the same step):
        # counted by flow control as in flight meanwhile.
        preparing = (
            contextlib.nullcontext() if self.flow_control is None else self.flow_control.preparing(request)
        )
        with preparing:
            for producer in producers:
                try:
                    await producer.prepare_async(request)
                except Exception:
                    log.exception("async data producer %s failed; scheduling without its data", producer.name)
        return parsed

    async def prepare_bodyless(self, headers: dict[str, str]) -> None:
        """The awaited step before `handle_bodyless`: what the BodylessRouter plugins wait for
        (a peer replica's pin for the response the request names). Returns at once when no
        BodylessRouter is configured."""
        if self.hooks.routes_bodyless:
            await self.hooks.bodyless_wait(_bodyless_request(headers))

    def handle_bodyless(self, headers: dict[str, str], subset: Sequence[str] | None) -> RoutedRequest:
        """Requests that end at their headers (GET /v1/models): any ready endpoint, uniformly,
        unless a BodylessRouter plugin knows the one it must reach (GET /v1/responses/{id}: the
        replica holding that response). A POST to an inference API without a body is the
        client's mistake: 400, not a model server's."""
        path = headers.get(":path", "")
        if headers.get(":method") == "POST" and api_kind(path) is not ApiKind.OTHER:
            raise self.refuse(ErrorCode.BAD_REQUEST, "error unmarshaling request body: the body is empty")
        request = _bodyless_request(headers)
        endpoints = self.datastore.ready_endpoints()
        if not endpoints:
            raise self.refuse(ErrorCode.SERVICE_UNAVAILABLE, "no ready endpoints in the pool")
        chosen = self.hooks.bodyless_target(request, endpoints) or self._rng.choice(endpoints)
        return RoutedRequest(self, request, SchedulingResult({"default": ProfileResult([chosen])}, "default"))

    def refuse(self, code: ErrorCode, message: str) -> RequestError:
        """The error for a request refused before it was parsed, already counted: `raise` it."""
        error = RequestError(code, message)
        self.record_error(error, None)
        return error

    def record_error(self, error: RequestError, request: InferenceRequest | None) -> None:
        """Count an error answer once, under the request's models when it got that far."""
        if request is None:
            model = target = ""
            fairness_id, priority = DEFAULT_FAIRNESS_ID, 0
        else:
            model, target = request.model, request.target_model
            fairness_id, priority = request.fairness_id, request.priority
        series = self.metrics.series(model, target)
        series.error(error.code.label)
        flow = series.flow(fairness_id, priority)
        if flow is not None:
            flow.error(error.code.label)
        log.debug("answered %d: %s", error.status, error.message)

    # --- scheduling ----------------------------------------------------------------------------

    def candidates(self, request: InferenceRequest, subset: Sequence[str] | None) -> list[Endpoint]:
        """Ready endpoints, narrowed by the data plane's subset hint and by the model served."""
        if self.standby is not None and self.standby():
            raise RequestError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "this EPP replica is a standby and keeps no endpoints (haPopulateNonLeaderDatastore=false)",
            )
        endpoints = self.datastore.ready_endpoints()
        if subset is not None:
            allowed_ips = {_host_of(hostport) for hostport in subset}
            endpoints = [e for e in endpoints if e.address in allowed_ips]
        if not endpoints:
            raise RequestError(
                ErrorCode.SERVICE_UNAVAILABLE, "failed to find endpoint candidates for serving the request"
            )
        if not request.target_model:  # a body the parser did not read (passthrough-parser)
            return endpoints
        serving = [e for e in endpoints if e.serves(request.target_model)]
        if not serving:
            # The name as records keep it: a client's 16 MB model name is not written back to it.
            raise RequestError(
                ErrorCode.NOT_FOUND,
                f"model {clip(request.target_model)!r} is not served by any endpoint of the pool",
            )
        return serving

    def route(
        self,
        request: InferenceRequest,
        subset: Sequence[str] | None = None,
        trace: RequestTrace | None = None,
        admitted: bool = False,
    ) -> RoutedRequest:
        """Pick endpoints for a parsed request. Raises RequestError for every refusal. A sampled
        request's decision record is kept whatever the outcome. `admitted`: the AdmitRequest
        plugins already admitted it (before flow control's queue)."""
        recorder = self.recorder
        record = self._start_record(request) if recorder is not None else None
        if record is None:
            return self._route(request, subset, None, trace, admitted)
        assert recorder is not None
        try:
            routed = self._route(request, subset, record, trace, admitted)
        except BaseException as error:
            if isinstance(error, RequestError):
                record.refused(error.code.label, error.status, error.message)
                if record.admission == "pending":
                    record.admission = "rejected"
            recorder.commit(record)
            raise
        try:
            recorder.commit(record)
        except BaseException:
            routed.finish()  # the load is taken: a request that fails here must not keep it
            raise
        routed.record = record
        return routed

    def _route(
        self,
        request: InferenceRequest,
        subset: Sequence[str] | None,
        record: DecisionRecord | None,
        trace: RequestTrace | None,
        admitted: bool = False,
    ) -> RoutedRequest:
        candidates = self.hooks.screen(request, self.candidates(request, subset))
        if not candidates:
            raise RequestError(ErrorCode.SERVICE_UNAVAILABLE, "screeners eliminated all endpoint candidates")
        if record is not None:
            record.candidates = candidates
            record.admission = "pending"
        with _NO_SPAN if trace is None else trace.step("epp.admission"):
            self.admission.admit(request, candidates)
            if not admitted:
                self.hooks.admit(request, candidates)
        if record is not None:
            record.admission = "admitted"
        started = time.perf_counter()
        try:
            with _NO_SPAN if trace is None else trace.step("epp.schedule", candidates=len(candidates)):
                result = self.scheduler.schedule(request, candidates, record, trace)
            if not result.targets:
                raise SchedulingError("no endpoint picked")
        except SchedulingError as exc:
            self.metrics.series(request.model, request.target_model).scheduling_failed()
            raise RequestError(
                ErrorCode.RESOURCE_EXHAUSTED, f"failed to find target endpoint: {exc}"
            ) from None
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.scheduler_e2e.observe(elapsed)
        primary = result.targets[0]
        if record is not None:
            self._record_result(record, result, elapsed)
        if trace is not None:
            trace.set(**{"epp.destination": primary.hostport, "gen_ai.request.model": request.model})
            result.headers.update(trace.propagation_headers())
        series = self.metrics.series(request.model, request.target_model)
        series.scheduled(
            request.priority, request.body_size, primary.name, primary.spec.namespace, primary.port
        )
        routed = RoutedRequest(self, request, result)
        flow = routed.flow = series.flow(request.fairness_id, request.priority)
        if flow is not None:
            flow.scheduled(request.body_size)
        try:
            self.hooks.pre_request(request, result)
            if self.flow_control is not None:  # its eviction policies are plugins too
                routed.eviction = self.flow_control.track(request, primary.hostport)
        except BaseException:
            routed.finish()
            raise
        return routed

    # --- decision records ----------------------------------------------------------------------

    def _start_record(self, request: InferenceRequest) -> DecisionRecord | None:
        recorder = self.recorder
        assert recorder is not None
        options = recorder.options
        explain = options.explain_header and request.headers.get(EXPLAIN_HEADER, "").lower() in ("1", "true")
        record = recorder.start(
            request.request_id, request.model, request.target_model, request.api.value, explain
        )
        if record is not None:
            record.explain = explain
            record.objective = clip(request.objective)
            record.priority = request.priority
            if options.record_prompts:
                record.prompt = request.prompt[:PROMPT_LIMIT].decode(errors="replace")
        return record

    def _record_result(self, record: DecisionRecord, result: SchedulingResult, seconds: float) -> None:
        record.schedule_seconds = seconds
        record.destination = result.targets[0]
        record.fallbacks = result.targets[1:]
        prefill = result.profile_results.get(PREFILL_PROFILE)
        if prefill is not None and prefill.targets:
            record.pd, record.prefill = "prefill-decode", prefill.targets[0]
        elif self._pd_pool:
            record.pd = "decode-only"
        if record.explain:
            # ASCII JSON: a header value must survive any gateway.
            result.response_headers[EXPLANATION_HEADER] = json.dumps(record.summary(), separators=(",", ":"))

    # --- feedback ------------------------------------------------------------------------------

    def finished(self, routed: RoutedRequest, usage: Usage | None) -> None:
        request = routed.request
        if routed.eviction is not None and self.flow_control is not None:
            self.flow_control.untrack(routed.eviction)
        if routed.record is not None:
            routed.record.response_status = routed.response_status
            routed.record.response_seconds = time.monotonic() - routed.started
        if request.model:
            series = self.metrics.series(request.model, request.target_model)
            latency = time.monotonic() - routed.started
            series.finished(latency, routed.response_bytes, usage)
            failed = routed.response_status is not None and routed.response_status >= 400
            if failed:
                series.error("ModelServerError")
            flow = routed.flow
            if flow is not None:
                flow.finished(latency, routed.response_bytes, usage)
                if failed:
                    flow.error("ModelServerError")
        with _PluginErrorsLogged("ResponseComplete"):
            self.hooks.response_complete(request, routed.result, usage)

    def note_upstream_unavailable(
        self, endpoints: Sequence[Endpoint], reason: str = "it answered 503"
    ) -> None:
        """A 503 from the data plane, or a gateway retry away from an endpoint, often means the
        endpoint died or hangs: stop choosing it for SUSPEND_SECONDS, or until the metrics scraper
        sees it answer again, whichever is first."""
        until = time.monotonic() + SUSPEND_SECONDS
        for endpoint in endpoints:
            if endpoint.suspended_until < until:
                log.warning(
                    "endpoint %s failed (%s); not choosing it for up to %ds",
                    endpoint,
                    reason,
                    SUSPEND_SECONDS,
                )
                endpoint.suspended_until = until

    def endpoint_at(self, hostport: str) -> Endpoint | None:
        return next((e for e in self.datastore.endpoints() if e.hostport == hostport), None)


def _host_of(hostport: str) -> str:
    """GIE matches subset hints by IP only, so every data-parallel rank of a listed pod qualifies;
    an IP as endpoints are known by (`canonical_ip`: an IPv4-mapped one as its IPv4)."""
    try:
        return split_host_port(canonical_hostport(hostport))[0]
    except ValueError:
        return hostport


def _bodyless_request(headers: dict[str, str]) -> InferenceRequest:
    """A request that ends at its headers, as the BodylessRouter plugins see it."""
    return InferenceRequest(
        request_id=headers.get(REQUEST_ID_HEADER, ""),
        api=ApiKind.OTHER,
        path=headers.get(":path", ""),
        model="",
        headers=headers,
    )
