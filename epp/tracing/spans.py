"""The OpenTelemetry side: the tracer provider built from OTEL_* variables, and the spans of one
request. Imported only when tracing is on."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

# GIE's defaults (cmd/epp): service name, exporter, sampler and its ratio.
DEFAULT_SERVICE_NAME = "gateway-api-inference-extension/epp"
DEFAULT_EXPORTER = "console"
DEFAULT_SAMPLER_RATIO = 0.1

# W3C trace context and baggage, the headers GIE's EPP reads and sets.
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def exporter_from_environment(env: Mapping[str, str]) -> SpanExporter | None:
    """OTEL_TRACES_EXPORTER: `console` (GIE's default), `otlp`, or `none`. OTLP speaks
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL (`grpc`, the default, or
    `http/protobuf`) to OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, read by the exporter itself."""
    kind = env.get("OTEL_TRACES_EXPORTER", DEFAULT_EXPORTER).split(",")[0].strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported (console, otlp, none)")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTLP protocol {protocol!r} is not supported (grpc, http/protobuf)")


def sampler_from_environment(env: Mapping[str, str]) -> Sampler | None:
    """None lets the SDK read OTEL_TRACES_SAMPLER; unset, GIE's parentbased_traceidratio with
    OTEL_TRACES_SAMPLER_ARG (default 0.1)."""
    if env.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(TraceIdRatioBased(float(env.get("OTEL_TRACES_SAMPLER_ARG") or DEFAULT_SAMPLER_RATIO)))


class Tracing:
    """A tracer provider of our own (the global one is left alone) and its tracer."""

    def __init__(self, processor: SpanProcessor | None, sampler: Sampler | None = None) -> None:
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
        resource = Resource.create(attributes)
        self.provider = (
            TracerProvider(resource=resource)
            if sampler is None
            else TracerProvider(resource=resource, sampler=sampler)
        )
        if processor is not None:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("epp")

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Tracing:
        env = os.environ if env is None else env
        exporter = exporter_from_environment(env)
        processor = BatchSpanProcessor(exporter) if exporter is not None else None
        tracing = cls(processor, sampler_from_environment(env))
        log.info(
            "tracing on: exporter %s, sampler %s",
            type(exporter).__name__ if exporter else "none",
            tracing.provider.sampler.get_description(),
        )
        return tracing

    def start_request(self, headers: dict[str, str]) -> RequestTrace | None:
        """None when the sampler drops this request: then nothing more is spent on it, and the
        client's own `traceparent`, if any, reaches the model server unchanged."""
        trace = RequestTrace(self.tracer, headers)
        return trace if trace.span.is_recording() else None

    def shutdown(self) -> None:
        self.provider.shutdown()


class RequestTrace:
    """The spans of one ext_proc exchange: `epp.request` from the request headers to the stream's
    end, continuing the client's `traceparent`; `step` opens a child of the innermost open step."""

    __slots__ = ("_context", "_response", "_root_context", "_tracer", "span")

    def __init__(self, tracer: trace.Tracer, headers: dict[str, str]) -> None:
        self._tracer = tracer
        parent = _PROPAGATOR.extract(headers)
        self.span = tracer.start_span(
            "epp.request",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": headers.get(":method", ""),
                "url.path": headers.get(":path", ""),
                "epp.request_id": headers.get("x-request-id", ""),
            },
        )
        self._root_context: Context = trace.set_span_in_context(self.span, parent)
        self._context = self._root_context
        self._response: Span | None = None

    @contextlib.contextmanager
    def step(self, name: str, **attributes: Any) -> Iterator[Span]:
        span = self._tracer.start_span(name, context=self._context, attributes=attributes)
        outer = self._context
        self._context = trace.set_span_in_context(span, outer)
        try:
            yield span
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            self._context = outer
            span.end()

    def set(self, **attributes: Any) -> None:
        self.span.set_attributes(attributes)

    def propagation_headers(self) -> dict[str, str]:
        """`traceparent` naming this exchange's span (and `tracestate`, `baggage` as received), for
        the forwarded request."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=self._root_context)
        return carrier

    def response_started(self, status: int) -> None:
        if self._response is None:
            self._response = self._tracer.start_span(
                "epp.response", context=self._root_context, attributes={"http.response.status_code": status}
            )
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR, f"model server answered {status}"))

    def failed(self, message: str) -> None:
        self.span.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        """Idempotent: ends the response span, then the exchange's."""
        if self._response is not None:
            self._response.end()
            self._response = None
        if self.span.is_recording():
            self.span.end()
