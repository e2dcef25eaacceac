"""`session-affinity-scorer` (llm-d): prefer the endpoint a request's session is pinned to (score 1,
others 0); how sessions are pinned is epp.scheduling.session_affinity's."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, register
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.session_affinity import SessionAffinityParams, SessionPins
from epp.scheduling.types import SchedulingResult


class SessionAffinityPlugin(Plugin, PreRequest):
    """What the scorer and `session-affinity-filter` share: their parameters, and pinning the
    session to each decision's endpoint."""

    Params = SessionAffinityParams

    def __init__(self, name: str, params: SessionAffinityParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.pins = SessionPins(params, context.clock)

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        self.pins.record(request, result)


@register
class SessionAffinityScorer(SessionAffinityPlugin, Scorer):
    type_name = "session-affinity-scorer"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        pinned = self.pins.choose(request, candidates)
        return [1.0 if e is pinned else 0.0 for e in candidates]
