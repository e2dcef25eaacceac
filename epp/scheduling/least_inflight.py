"""The spine's scheduler: fewest in-flight requests, random among ties."""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.requests import InferenceRequest, Usage
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult


class LeastInflightScheduler:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        if not candidates:
            raise SchedulingError("no candidate endpoints")
        fewest = min(e.inflight_requests for e in candidates)
        tied = [e for e in candidates if e.inflight_requests == fewest]
        return SchedulingResult({"default": ProfileResult([self._rng.choice(tied)])}, "default")

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        return None

    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None:
        return None

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        return None
