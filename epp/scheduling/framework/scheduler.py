"""The plugin scheduler: data producers, then the profile handler's loop over profiles, then the
traffic hooks. Implements the `Scheduler` protocol the request director drives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter

from epp.datastore import Endpoint
from epp.metrics.exporter import EppMetrics
from epp.requests import InferenceRequest, Usage
from epp.scheduling.framework import timing
from epp.scheduling.framework.plugin import (
    DataProducer,
    EndpointObserver,
    Plugin,
    PreRequest,
    ProfileHandler,
    ResponseComplete,
    ResponseReceived,
)
from epp.scheduling.framework.profile import SchedulerProfile
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult


class PluginScheduler:
    """`producers` must already be in dependency order; every hook plugin is called for every
    request in the order given (config order)."""

    def __init__(
        self,
        handler: ProfileHandler,
        profiles: Sequence[SchedulerProfile],
        producers: Sequence[DataProducer],
        plugins: Sequence[Plugin],
        metrics: EppMetrics,
    ) -> None:
        self.handler = handler
        self.profiles: Mapping[str, SchedulerProfile] = {p.name: p for p in profiles}
        self.plugins = tuple(plugins)
        self._profile_names = tuple(self.profiles)
        self._observe_pick = timing.observer(metrics, timing.PROFILE_PICKER, handler)
        self._observe_process = timing.observer(metrics, timing.PROCESS_RESULTS, handler)
        self._producers = [
            (p, timing.observer(metrics, timing.PREPARE_DATA, p))
            for p in producers
            if isinstance(p, DataProducer)
        ]
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
        self._endpoint_observers = [p for p in plugins if isinstance(p, EndpointObserver)]

    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        if not candidates:
            raise SchedulingError("no candidate endpoints")
        for producer, observe in self._producers:
            started = perf_counter()
            producer.prepare(request, candidates)
            observe(perf_counter() - started)
        results: dict[str, ProfileResult | None] = {}
        while True:
            started = perf_counter()
            chosen = self.handler.pick_profiles(request, self._profile_names, results)
            self._observe_pick(perf_counter() - started)
            if not chosen:
                break
            for name in chosen:
                profile = self.profiles.get(name)
                if profile is None or name in results:
                    problem = "an unknown" if profile is None else "an already run"
                    raise SchedulingError(
                        f"profile handler {self.handler.name!r} picked {problem} profile {name!r}"
                    )
                results[name] = profile.run(request, candidates)
        started = perf_counter()
        result = self.handler.process_results(request, results)
        self._observe_process(perf_counter() - started)
        return result

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

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        """Subscribe this to the datastore so plugins forget endpoints that left the pool."""
        for plugin in self._endpoint_observers:
            plugin.endpoint_removed(endpoint)
