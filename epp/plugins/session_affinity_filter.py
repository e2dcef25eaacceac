"""`session-affinity-filter` (llm-d): keep only the endpoint a request's session is pinned to when it
is a candidate, else every candidate (never an empty set); the hard counterpart of
`session-affinity-scorer`, with the same parameters and pinning (epp.scheduling.session_affinity)."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import register
from epp.plugins.session_affinity_scorer import SessionAffinityPlugin
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


@register
class SessionAffinityFilter(SessionAffinityPlugin, Filter):
    type_name = "session-affinity-filter"

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        pinned = self.pins.choose(request, candidates)
        return [pinned] if pinned is not None else candidates
