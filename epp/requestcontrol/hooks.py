"""Request-control extension points and their dispatch: plugins called around a scheduled
request (before it is forwarded, when its response starts, when it ends) and the request parser.

`RequestControlHooks` calls every hook plugin for every request in config order, timing each
into `inference_extension_plugin_duration_seconds`."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from time import perf_counter

from epp.framework import Extension, Plugin, timing
from epp.metrics.exporter import EppMetrics
from epp.requests import InferenceRequest, RequestError, Usage
from epp.scheduling.types import SchedulingResult


class AdmitRequest(Extension):
    """GIE's AdmitRequest point: asked once per parsed request, before flow control's queue and
    scheduling. None admits; a RequestError (status, message, Retry-After) refuses."""

    @abstractmethod
    def admit_request(self, request: InferenceRequest) -> RequestError | None: ...


class PreRequest(Extension):
    @abstractmethod
    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        """After scheduling, before the request is forwarded."""


class ResponseReceived(Extension):
    @abstractmethod
    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None:
        """The model server's response headers arrived."""


class ResponseComplete(Extension):
    @abstractmethod
    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        """The response ended, however it ended (once per scheduled request)."""


class RequestParser(Extension):
    """Marks the plugins a config's `parser` section may name."""


class RequestControlHooks:
    """The configured hook plugins, in config order."""

    def __init__(self, plugins: Sequence[Plugin], metrics: EppMetrics) -> None:
        self._admit = [p for p in plugins if isinstance(p, AdmitRequest)]
        self._pre_request = [
            (p, timing.observer(metrics, timing.PRE_REQUEST, p)) for p in plugins if isinstance(p, PreRequest)
        ]
        self._response_received = [
            (p, timing.observer(metrics, timing.RESPONSE_RECEIVED, p))
            for p in plugins
            if isinstance(p, ResponseReceived)
        ]
        self._response_complete = [
            (p, timing.observer(metrics, timing.RESPONSE_COMPLETE, p))
            for p in plugins
            if isinstance(p, ResponseComplete)
        ]

    def admit(self, request: InferenceRequest) -> None:
        """Raise the first admission plugin's refusal."""
        for plugin in self._admit:
            refusal = plugin.admit_request(request)
            if refusal is not None:
                raise refusal

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

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        for plugin, observe in self._response_complete:
            started = perf_counter()
            plugin.response_complete(request, result, usage)
            observe(perf_counter() - started)
