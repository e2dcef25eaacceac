"""`data-parallel-profile-handler` (llm-d, deprecated there in favour of `single-profile-handler`
with Istio >= 1.28.1): data-parallel rank routing through one port per pod.

A vLLM pod serving data-parallel ranks exposes one port per rank (each an endpoint of the pool),
but only the primary port (`primaryPort`, default 8000) is reachable through the gateway; a
sidecar there forwards to the rank the EPP chose. So, as llm-d's: run the one profile; the
destination is every pick with its port replaced by `primaryPort`, and the request carries
`x-data-parallel-host-port: <ip>:<rank port>` of the first pick. Per-endpoint state (in-flight
load, prefix index) stays on the rank endpoint that was picked. The config must have exactly one
scheduling profile (llm-d fails every request otherwise; this EPP refuses the config)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.headers import DATA_PARALLEL_HEADER
from epp.requests import InferenceRequest
from epp.scheduling.framework import ProfileHandler
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult


class DataParallelParams(PluginParams):
    primary_port: int = Field(default=8000, ge=1, le=65535)


@register
class DataParallelProfileHandler(Plugin, ProfileHandler):
    type_name = "data-parallel-profile-handler"
    Params = DataParallelParams

    def __init__(self, name: str, params: DataParallelParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.primary_port = params.primary_port

    @classmethod
    def profile_problems(cls, params: Any, profiles: Sequence[str]) -> list[str]:
        if len(profiles) != 1:
            return [f"{cls.type_name} needs exactly one scheduling profile, got {len(profiles)}"]
        return []

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
            raise SchedulingError(f"failed to run scheduler profile {name!r}")
        decision = SchedulingResult({name: result}, name, destination_port=self.primary_port)
        decision.headers[DATA_PARALLEL_HEADER] = result.targets[0].hostport
        return decision
