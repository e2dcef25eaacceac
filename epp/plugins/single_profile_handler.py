"""`single-profile-handler`: run the one configured profile; its result is the decision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import ProfileHandler
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult


@register
class SingleProfileHandler(Plugin, ProfileHandler):
    type_name = "single-profile-handler"

    def pick_profiles(
        self,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        return () if results else profiles

    def process_results(
        self, request: InferenceRequest, results: Mapping[str, ProfileResult | None]
    ) -> SchedulingResult:
        if len(results) != 1:
            raise SchedulingError(f"{self.type_name} needs exactly one profile result, got {len(results)}")
        name, result = next(iter(results.items()))
        if result is None or not result.targets:
            raise SchedulingError(f"profile {name!r} found no endpoint for the request")
        return SchedulingResult({name: result}, name)
