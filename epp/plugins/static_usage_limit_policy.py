"""`static-usage-limit-policy` (GIE's default usage-limit policy): every priority band may dispatch
while the pool's saturation is below `threshold` (default 1.0)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from epp.flowcontrol.queues import UsageLimitPolicy
from epp.framework import Plugin, PluginContext, PluginParams, register


class StaticUsageLimitPolicyParams(PluginParams):
    threshold: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)


@register
class StaticUsageLimitPolicy(Plugin, UsageLimitPolicy):
    type_name = "static-usage-limit-policy"
    Params = StaticUsageLimitPolicyParams

    def __init__(self, name: str, params: StaticUsageLimitPolicyParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.threshold = params.threshold

    def ceilings(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        return [self.threshold] * len(priorities)
