"""The director turns a parsed request into a routing decision and keeps load accounting exact."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import orjson

from epp.datastore import Datastore, Endpoint
from epp.datastore.endpoint import split_host_port
from epp.flowcontrol import Admission, AdmitAll
from epp.flowcontrol.controller import FlowController, bound_fairness_id
from epp.headers import FAIRNESS_HEADER, MODEL_REWRITE_HEADER, OBJECTIVE_HEADER, REQUEST_ID_HEADER
from epp.metrics.exporter import EppMetrics
from epp.requestcontrol.hooks import RequestControlHooks
from epp.requestcontrol.model_rewrite import ModelRewrites
from epp.requests import ApiKind, ErrorCode, InferenceRequest, RequestError, Usage
from epp.requests.parser import api_kind, parse_request
from epp.requests.usage import UsageReader
from epp.scheduling.types import ProfileResult, Scheduler, SchedulingError, SchedulingResult

log = logging.getLogger(__name__)

SUSPEND_SECONDS = 10


class RoutedRequest:
    """A scheduled request until its response ends. `finish` is idempotent, so every way a stream
    can end (normal end, error, client disconnect) releases the in-flight count exactly once."""

    __slots__ = (
        "_charged_tokens",
        "_director",
        "_finished",
        "_model_swap",
        "_usage",
        "body",
        "loaded",
        "request",
        "response_bytes",
        "response_status",
        "result",
        "started",
    )

    def __init__(self, director: Director, request: InferenceRequest, result: SchedulingResult) -> None:
        self._director = director
        self.request = request
        self.result = result
        self.started = time.monotonic()
        self.response_status: int | None = None
        self.response_bytes = 0
        self.body: bytes | None = None
        self._usage: UsageReader | None = None
        self._finished = False
        self._model_swap = _model_swap(request.target_model, request.model)
        self.loaded = result.first_targets()
        self._charged_tokens = request.prompt_tokens
        for endpoint in self.loaded:
            endpoint.inflight_requests += 1
            endpoint.inflight_tokens += self._charged_tokens

    @property
    def destination(self) -> str:
        return ",".join(e.hostport for e in self.result.targets)

    @property
    def headers(self) -> dict[str, str]:
        return self.result.headers

    def response_started(self, status: int, event_stream: bool) -> None:
        self.response_status = status
        self._usage = UsageReader(streaming=event_stream or self.request.stream)
        with _plugin_errors_logged("ResponseReceived"):
            self._director.hooks.response_received(self.request, self.result)
        if status == 503:
            self._director.note_upstream_unavailable(self.result.targets[:1])

    def response_body(self, chunk: bytes, end_of_stream: bool) -> None:
        self.response_bytes += len(chunk)
        if self._usage is None:
            self._usage = UsageReader(streaming=self.request.stream)
        self._usage.feed(chunk, end_of_stream)
        if end_of_stream:
            self.finish()

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
        self._director.finished(self, usage)


@contextlib.contextmanager
def _plugin_errors_logged(extension_point: str) -> Iterator[None]:
    """Response-path hooks only learn from traffic: a failing one is logged and the response goes
    on (GIE does the same); a failure on the request path is the request's 500 instead."""
    try:
        yield
    except Exception:
        log.exception("a %s plugin failed; the response continues", extension_point)


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


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed request and, when its model was rewritten, the body to send upstream."""

    request: InferenceRequest
    body: bytes | None


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
        flow_control: FlowController | None = None,
    ) -> None:
        self.datastore = datastore
        # GIE's flow-control layer: requests wait in its queues (admit_body) before routing.
        self.flow_control = flow_control
        self.scheduler = scheduler
        self.admission = admission or AdmitAll()
        self.objectives: Mapping[str, int] = objectives or {}
        self.model_rewrites = ModelRewrites(rng=rng)
        self.metrics = metrics or EppMetrics()
        self.hooks = hooks or RequestControlHooks((), self.metrics)
        self._rng = rng or random.Random()

    # --- entry points from the protocol layer --------------------------------------------------

    async def admit_body(
        self, raw: bytes, headers: dict[str, str], deadline: float | None = None
    ) -> Parsed | None:
        """The awaited step between a complete body and its routing: with flow control on, parse
        the request and wait in its flow's queue until dispatched (`deadline`: the caller's
        seconds remaining). Returns what handle_body needs, or None without flow control.
        Raises RequestError (counted) for a bad body and every flow-control refusal."""
        if self.flow_control is None:
            return None
        parsed = self.parse_body(raw, headers)
        try:
            await self.flow_control.enqueue_and_wait(parsed.request, deadline)
        except RequestError as error:
            self.record_error(error, parsed.request)
            raise
        return parsed

    def parse_body(self, raw: bytes, headers: dict[str, str]) -> Parsed:
        """Parse a complete body and decide its model. Raises RequestError, counted."""
        request: InferenceRequest | None = None
        try:
            request = parse_request(
                raw, headers.get(":path", ""), headers, headers.get(REQUEST_ID_HEADER, "")
            )
            request.objective = headers.get(OBJECTIVE_HEADER, "")
            request.priority = self.objectives.get(request.objective, 0)
            request.fairness_id = bound_fairness_id(headers.get(FAIRNESS_HEADER) or request.fairness_id)
            rewrite = self._target_model(request.model, headers.get(MODEL_REWRITE_HEADER))
            body: bytes | None = None
            if rewrite and rewrite != request.model:
                request.target_model = rewrite
                request.body["model"] = rewrite
                # Written before scheduling: whatever fails here must fail with no load taken.
                body = orjson.dumps(request.body)
            self.hooks.admit(request)
        except RequestError as error:
            self.record_error(error, request)
            raise
        return Parsed(request, body)

    def handle_body(
        self,
        raw: bytes,
        headers: dict[str, str],
        subset: Sequence[str] | None,
        parsed: Parsed | None = None,
    ) -> RoutedRequest:
        """Parse a complete request body (unless admit_body did) and route it. Raises
        RequestError for every refusal, after counting it."""
        if parsed is None:
            parsed = self.parse_body(raw, headers)
        try:
            routed = self.route(parsed.request, subset)
        except RequestError as error:
            self.record_error(error, parsed.request)
            raise
        routed.body = parsed.body
        return routed

    def _target_model(self, model: str, header: str | None) -> str | None:
        """An InferenceModelRewrite rule for the model wins over the rewrite header, as in GIE."""
        if self.model_rewrites:
            chosen = self.model_rewrites.choose(model)
            if chosen is not None:
                rewrite_name, target = chosen
                self.metrics.model_rewritten(rewrite_name, model, target)
                return target
        return header

    def handle_bodyless(self, headers: dict[str, str], subset: Sequence[str] | None) -> RoutedRequest:
        """Requests that end at their headers (GET /v1/models): any ready endpoint, uniformly. A
        POST to an inference API without a body is the client's mistake: 400, not a model server's."""
        path = headers.get(":path", "")
        if headers.get(":method") == "POST" and api_kind(path) is not ApiKind.OTHER:
            raise self.refuse(ErrorCode.BAD_REQUEST, "error unmarshaling request body: the body is empty")
        request = InferenceRequest(
            request_id=headers.get(REQUEST_ID_HEADER, ""),
            api=ApiKind.OTHER,
            path=path,
            model="",
            headers=headers,
        )
        endpoints = self.datastore.ready_endpoints()
        if not endpoints:
            raise self.refuse(ErrorCode.SERVICE_UNAVAILABLE, "no ready endpoints in the pool")
        chosen = self._rng.choice(endpoints)
        return RoutedRequest(self, request, SchedulingResult({"default": ProfileResult([chosen])}, "default"))

    def refuse(self, code: ErrorCode, message: str) -> RequestError:
        """The error for a request refused before it was parsed, already counted: `raise` it."""
        error = RequestError(code, message)
        self.record_error(error, None)
        return error

    def record_error(self, error: RequestError, request: InferenceRequest | None) -> None:
        """Count an error answer once, under the request's models when it got that far."""
        model, target = (request.model, request.target_model) if request is not None else ("", "")
        self.metrics.series(model, target).error(error.code.label)
        log.debug("answered %d: %s", error.status, error.message)

    # --- scheduling ----------------------------------------------------------------------------

    def candidates(self, request: InferenceRequest, subset: Sequence[str] | None) -> list[Endpoint]:
        """Ready endpoints, narrowed by the data plane's subset hint and by the model served."""
        endpoints = self.datastore.ready_endpoints()
        if subset is not None:
            allowed_ips = {_host_of(hostport) for hostport in subset}
            endpoints = [e for e in endpoints if e.address in allowed_ips]
        if not endpoints:
            raise RequestError(
                ErrorCode.SERVICE_UNAVAILABLE, "failed to find endpoint candidates for serving the request"
            )
        serving = [e for e in endpoints if e.serves(request.target_model)]
        if not serving:
            raise RequestError(
                ErrorCode.NOT_FOUND,
                f"model {request.target_model!r} is not served by any endpoint of the pool",
            )
        return serving

    def route(self, request: InferenceRequest, subset: Sequence[str] | None = None) -> RoutedRequest:
        """Pick endpoints for a parsed request. Raises RequestError for every refusal."""
        candidates = self.candidates(request, subset)
        self.admission.admit(request, candidates)
        started = time.perf_counter()
        try:
            result = self.scheduler.schedule(request, candidates)
            if not result.targets:
                raise SchedulingError("no endpoint picked")
        except SchedulingError as exc:
            self.metrics.series(request.model, request.target_model).scheduling_failed()
            raise RequestError(
                ErrorCode.RESOURCE_EXHAUSTED, f"failed to find target endpoint: {exc}"
            ) from None
        finally:
            self.metrics.scheduler_e2e.observe(time.perf_counter() - started)
        primary = result.targets[0]
        self.metrics.series(request.model, request.target_model).scheduled(
            request.priority, request.body_size, primary.name, primary.spec.namespace, primary.port
        )
        routed = RoutedRequest(self, request, result)
        try:
            self.hooks.pre_request(request, result)
        except BaseException:
            routed.finish()
            raise
        return routed

    # --- feedback ------------------------------------------------------------------------------

    def finished(self, routed: RoutedRequest, usage: Usage | None) -> None:
        request = routed.request
        if request.model:
            series = self.metrics.series(request.model, request.target_model)
            series.finished(time.monotonic() - routed.started, routed.response_bytes, usage)
            if routed.response_status is not None and routed.response_status >= 400:
                series.error("ModelServerError")
        with _plugin_errors_logged("ResponseComplete"):
            self.hooks.response_complete(request, routed.result, usage)

    def note_upstream_unavailable(self, endpoints: Sequence[Endpoint]) -> None:
        """A 503 from the data plane often means the endpoint died: stop choosing it for
        SUSPEND_SECONDS, or until the metrics scraper sees it answer again, whichever is first."""
        until = time.monotonic() + SUSPEND_SECONDS
        for endpoint in endpoints:
            if endpoint.suspended_until < until:
                log.warning(
                    "endpoint %s answered 503; not choosing it for up to %ds", endpoint, SUSPEND_SECONDS
                )
                endpoint.suspended_until = until


def _host_of(hostport: str) -> str:
    """GIE matches subset hints by IP only, so every data-parallel rank of a listed pod qualifies."""
    try:
        return split_host_port(hostport)[0]
    except ValueError:
        return hostport
