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

from epp.framework import PluginContext, PluginParams, register
from epp.headers import DATA_PARALLEL_HEADER
from epp.plugins.single_profile_handler import SingleProfileHandler
from epp.requests import InferenceRequest
from epp.scheduling.types import ProfileResult, SchedulingResult


class DataParallelParams(PluginParams):
    primary_port: int = Field(default=8000, ge=1, le=65535)


@register
class DataParallelProfileHandler(SingleProfileHandler):
    """The single handler's run and result selection, then the primary port and the rank header."""

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

    def process_results(
        self, request: InferenceRequest, results: Mapping[str, ProfileResult | None]
    ) -> SchedulingResult:
        decision = super().process_results(request, results)
        decision.destination_port = self.primary_port
        decision.headers[DATA_PARALLEL_HEADER] = decision.targets[0].hostport
        return decision
