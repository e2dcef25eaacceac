"""`program-aware-fairness` (llm-d's program-aware fairness policy): the flows of a band are
programs (agentic workflows, tenants: one fairness id each), and the band serves the program that
has received the least service lately, LAS (Least Attained Service) over weighted tokens.

Each program's attained service is prompt tokens + 2 x completion tokens of its completed
requests (the usage the model server reports in the response; none read, nothing charged), decaying with a
half-life of `lasHalfLifeSeconds` of wall-clock time (0: never), so a program back from idling
competes on near-equal footing. A pick scores every waiting program

    lasWeightService x (1 - normalised service) + lasWeightHeadWait x normalised head wait

(each normalised to [0, 1] over the waiting programs, 0.5 when they are all equal; the head wait
is the age of the program's oldest queued request in whole milliseconds) and the highest score
goes next: the least served program, the longest waiting one breaking ties.

A program's state is forgotten once it has had nothing in flight and no completion for
`evictionTtlSeconds` (0: never), checked every `evictionSweepSeconds` (here on the next request
or pick after that interval rather than by a timer). Completion is the end of the response however
it ends (upstream: the end of the response body only, so an abandoned request keeps its program
in flight, and so would every SSE response whose body the EPP skips here).

Metrics (llm-d's names): `llm_d_epp_program_aware_attained_service_tokens` and
`llm_d_epp_program_aware_avg_wait_time_milliseconds` per program, and
`llm_d_epp_program_aware_jains_fairness_index` over the programs' average waits."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Gauge
from pydantic import Field, field_validator

from epp.flowcontrol.queues import Band, FairnessPolicy, Flow, QueuedRequest
from epp.framework import ParameterUpgrade, Plugin, PluginContext, PluginParams, register
from epp.metrics.exporter import FlowControlMetrics
from epp.metrics.per_registry import PerRegistry
from epp.requestcontrol.hooks import PreRequest, ResponseComplete
from epp.requests import InferenceRequest, Usage
from epp.scheduling.types import SchedulingResult

INPUT_TOKEN_WEIGHT = 1
OUTPUT_TOKEN_WEIGHT = 2
DEFAULT_PROGRAM = "default-flow"
# Request attribute: when the request entered its flow-control queue (the policy's clock).
ENQUEUED_AT = "program-aware-fairness/enqueue-time"


class ProgramAwareFairnessParams(PluginParams):
    strategy: str = "las"
    eviction_ttl_seconds: float = Field(default=3600.0, ge=0.0, allow_inf_nan=False)
    eviction_sweep_seconds: float = Field(default=300.0, gt=0.0, allow_inf_nan=False)
    las_weight_service: float = Field(default=0.8, ge=0.0, allow_inf_nan=False)
    las_weight_head_wait: float = Field(default=0.2, ge=0.0, allow_inf_nan=False)
    las_half_life_seconds: float = Field(default=60.0, ge=0.0, allow_inf_nan=False)

    @classmethod
    def upgrade(cls, raw: Mapping[str, Any], type_name: str = "") -> ParameterUpgrade:
        """llm-d v0.10's `lasDecayFactor` (a per-dispatch decay) is gone from main, where a config
        setting it fails: read as the default half-life, with a warning that says so."""
        upgrade = super().upgrade(raw, type_name)
        if "lasDecayFactor" in upgrade.parameters:
            upgrade.parameters.pop("lasDecayFactor")
            upgrade.warnings.append(
                "lasDecayFactor (llm-d v0.10) is ignored: llm-d main removed it and refuses a config "
                "that sets it; attained service decays with lasHalfLifeSeconds"
            )
        return upgrade

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> Literal["las"]:
        if value not in ("", "las"):
            raise ValueError(f'unknown scoring strategy {value!r}: only "las" is supported')
        return "las"


@dataclass(slots=True)
class ProgramState:
    """What the policy knows of one program."""

    last_completion: float  # seeded at first sight, so a program that never completes expires too
    service: float = 0.0  # attained service, decayed up to `decayed_at`
    decayed_at: float | None = None
    in_flight: int = 0
    dispatched: int = 0
    waits: int = 0
    average_wait_ms: float = 0.0


class _Gauges(PerRegistry):
    """The plugin's gauges, one set per metrics registry (several instances share them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        prefix = "llm_d_epp_program_aware_"
        self.fairness_index = Gauge(
            f"{prefix}jains_fairness_index",
            "[ALPHA] Jain's fairness index over average wait time across active programs.",
            registry=registry,
        )
        self.average_wait = Gauge(
            f"{prefix}avg_wait_time_milliseconds",
            "[ALPHA] Cumulative mean of flow-control queue wait time per program in milliseconds.",
            ["program_id"],
            registry=registry,
        )
        self.attained_service = Gauge(
            f"{prefix}attained_service_tokens",
            "[ALPHA] Time-decayed attained service (weighted tokens consumed) per program.",
            ["program_id"],
            registry=registry,
        )


def jains_index(values: list[float]) -> float:
    """(sum x)^2 / (n sum x^2); 1.0 (perfectly fair) with fewer than two values or all zero."""
    squares = sum(x * x for x in values)
    if len(values) <= 1 or squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)


def _normalised(value: float, low: float, high: float) -> float:
    return 0.5 if high == low else (value - low) / (high - low)


@register
class ProgramAwareFairness(Plugin, FairnessPolicy, PreRequest, ResponseComplete):
    type_name = "program-aware-fairness"
    Params = ProgramAwareFairnessParams

    def __init__(self, name: str, params: ProgramAwareFairnessParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.clock: Callable[[], float] = context.clock
        self.programs: dict[str, ProgramState] = {}
        self._flow_metrics: FlowControlMetrics = context.metrics.flow_control
        self._gauges = _Gauges.for_registry(context.metrics.registry)
        self._next_sweep = self.clock() + params.eviction_sweep_seconds

    # --- state ---------------------------------------------------------------------------------

    def program(self, program_id: str) -> ProgramState:
        now = self.clock()
        if self.params.eviction_ttl_seconds > 0 and now >= self._next_sweep:
            self._next_sweep = now + self.params.eviction_sweep_seconds
            self.sweep(now)
        state = self.programs.get(program_id)
        if state is None:
            state = self.programs[program_id] = ProgramState(last_completion=now)
        return state

    def service(self, state: ProgramState, now: float) -> float:
        """The program's attained service with the decay up to `now` folded in."""
        if state.decayed_at is None:
            state.decayed_at = now
            return state.service
        elapsed = now - state.decayed_at
        if elapsed <= 0:
            return state.service
        half_life = self.params.las_half_life_seconds
        if half_life > 0:
            state.service *= 2.0 ** (-elapsed / half_life)
        state.decayed_at = now
        return state.service

    def sweep(self, now: float) -> None:
        """Forget programs idle (nothing in flight, no completion) for longer than the TTL."""
        ttl = self.params.eviction_ttl_seconds
        for program_id, state in list(self.programs.items()):
            if state.in_flight == 0 and now - state.last_completion > ttl:
                del self.programs[program_id]
                label = self._label(program_id)
                if label == program_id:  # an overflow label is shared: keep it
                    for gauge in (self._gauges.average_wait, self._gauges.attained_service):
                        with contextlib.suppress(KeyError):  # a program never dispatched has none
                            gauge.remove(label)

    def _label(self, program_id: str) -> str:
        return self._flow_metrics.flow_labels(program_id, 0)[0]

    # --- FairnessPolicy ------------------------------------------------------------------------

    def pick(self, band: Band) -> Flow | None:
        now = self.clock()
        scored: list[tuple[Flow, float, float]] = []
        for program_id, flow in band.flows.items():
            head = flow.head()
            if head is None:
                continue
            service = self.service(self.program(program_id), now)
            wait_ms = float(int((now - head.enqueued) * 1000))
            scored.append((flow, service, wait_ms))
        if not scored:
            return None
        low_service, high_service = min(s for _, s, _ in scored), max(s for _, s, _ in scored)
        low_wait, high_wait = min(w for _, _, w in scored), max(w for _, _, w in scored)
        best: Flow | None = None
        best_score = float("-inf")
        for flow, service, wait_ms in scored:
            score = self.params.las_weight_service * (
                1.0 - _normalised(service, low_service, high_service)
            ) + self.params.las_weight_head_wait * _normalised(wait_ms, low_wait, high_wait)
            if score > best_score:
                best, best_score = flow, score
        self._gauges.fairness_index.set(
            jains_index([s.average_wait_ms for s in self.programs.values() if s.waits > 0])
        )
        return best

    def dispatched(self, band: Band, item: QueuedRequest) -> None:
        item.request.attributes[ENQUEUED_AT] = item.enqueued

    # --- request lifecycle ---------------------------------------------------------------------

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        program_id = request.fairness_id or DEFAULT_PROGRAM
        state = self.program(program_id)
        state.in_flight += 1
        state.dispatched += 1
        enqueued = request.attributes.get(ENQUEUED_AT)
        if enqueued is not None:
            wait_ms = float(int((self.clock() - enqueued) * 1000))
            state.waits += 1
            state.average_wait_ms += (wait_ms - state.average_wait_ms) / state.waits
        self._gauges.average_wait.labels(self._label(program_id)).set(state.average_wait_ms)

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        program_id = request.fairness_id or DEFAULT_PROGRAM
        state = self.program(program_id)
        now = self.clock()
        usage = usage or Usage()  # no usage reported: nothing to charge, as upstream's zero usage
        cost = INPUT_TOKEN_WEIGHT * usage.prompt_tokens + OUTPUT_TOKEN_WEIGHT * usage.completion_tokens
        state.service = self.service(state, now) + cost
        self._gauges.attained_service.labels(self._label(program_id)).set(state.service)
        # max: a request whose pre_request never ran (an earlier plugin failed) ends here too
        state.in_flight = max(0, state.in_flight - 1)
        state.last_completion = now
