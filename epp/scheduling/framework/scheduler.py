"""The plugin scheduler: data producers, then the profile handler's loop over profiles.
Implements the `Scheduler` protocol the request director drives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from time import perf_counter
from typing import TYPE_CHECKING

from epp.datalayer import DataProducer
from epp.datastore import Endpoint
from epp.explain import DecisionRecord
from epp.framework import timing
from epp.metrics.exporter import EppMetrics
from epp.requests import InferenceRequest
from epp.scheduling.framework.extensions import ProfileHandler
from epp.scheduling.framework.profile import SchedulerProfile
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult

if TYPE_CHECKING:
    from epp.tracing.spans import RequestTrace


class PluginScheduler:
    """`producers` must already be in dependency order."""

    def __init__(
        self,
        handler: ProfileHandler,
        profiles: Sequence[SchedulerProfile],
        producers: Sequence[DataProducer],
        metrics: EppMetrics,
    ) -> None:
        self.handler = handler
        self.profiles: Mapping[str, SchedulerProfile] = {p.name: p for p in profiles}
        self._profile_names = tuple(self.profiles)
        self._observe_pick = timing.observer(metrics, timing.PROFILE_PICKER, handler)
        self._observe_process = timing.observer(metrics, timing.PROCESS_RESULTS, handler)
        self._producers = [
            (p, timing.observer(metrics, timing.PREPARE_DATA, p))
            for p in producers
            if isinstance(p, DataProducer)
        ]

    def schedule(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        record: DecisionRecord | None = None,
        trace: RequestTrace | None = None,
    ) -> SchedulingResult:
        """`record` (a sampled request) keeps what every profile did; `trace` (tracing on) gets
        one span per profile."""
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
                if record is None and trace is None:
                    results[name] = profile.run(request, candidates)
                else:
                    results[name] = self._run_observed(profile, request, candidates, record, trace)
        started = perf_counter()
        result = self.handler.process_results(request, results)
        self._observe_process(perf_counter() - started)
        return result

    @staticmethod
    def _run_observed(
        profile: SchedulerProfile,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        record: DecisionRecord | None,
        trace: RequestTrace | None,
    ) -> ProfileResult | None:
        started = perf_counter()
        with trace.step("epp.profile", **{"epp.profile": profile.name}) if trace else nullcontext() as span:
            result = profile.run(request, candidates, record)
            if span is not None:
                span.set_attribute("epp.picked", [e.name for e in result.targets] if result else [])
        if record is not None:
            record.profiles[-1].seconds = perf_counter() - started
        return result
