"""`least-tokens-served-fairness-policy`: between the tenants (fairness ids) of a band, serve the
one that has received the fewest tokens, in the spirit of VTC (Sheng et al., "Fairness in Serving
Large Language Models", OSDI '24: the Virtual Token Counter). Each dispatched request charges its
tenant prompt tokens x `inputWeight` + expected output tokens (its `max_tokens`, else
`defaultOutputTokens`) x `outputWeight`. A tenant that starts waiting is lifted to the smallest
count among the tenants already waiting (VTC's counter lift), so time spent idle earns no credit
to monopolise the band later. Counts of at most `maxTenants` tenants are kept (least recently
served forgotten first: a forgotten tenant is lifted like a new one). Not a GIE policy; GIE's are
`global-strict-fairness-policy` and `round-robin-fairness-policy`."""

from __future__ import annotations

from collections import OrderedDict

from pydantic import Field

from epp.flowcontrol.queues import Band, FairnessPolicy, Flow, QueuedRequest
from epp.framework import Plugin, PluginContext, PluginParams, register


class LeastTokensServedParams(PluginParams):
    input_weight: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    output_weight: float = Field(default=2.0, ge=0.0, allow_inf_nan=False)  # VTC's w_q / w_p
    default_output_tokens: int = Field(default=256, ge=0)
    max_tenants: int = Field(default=10_000, gt=0)


@register
class LeastTokensServedFairnessPolicy(Plugin, FairnessPolicy):
    type_name = "least-tokens-served-fairness-policy"
    Params = LeastTokensServedParams

    def __init__(self, name: str, params: LeastTokensServedParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params

    def new_state(self) -> OrderedDict[str, float]:
        return OrderedDict()  # fairness id -> tokens served, least recently served first

    def pick(self, band: Band) -> Flow | None:
        served: OrderedDict[str, float] = band.fairness_state
        flows = band.flows
        if not flows:
            return None
        known = [served[fid] for fid in flows if fid in served]
        floor = min(known) if known else 0.0
        best: Flow | None = None
        best_count = 0.0
        for fid, flow in flows.items():
            count = served.get(fid)
            if count is None:  # a tenant that starts waiting: lifted to the waiting minimum
                count = served[fid] = floor
            if best is None or count < best_count:
                best, best_count = flow, count
        return best

    def dispatched(self, band: Band, item: QueuedRequest) -> None:
        served: OrderedDict[str, float] = band.fairness_state
        request = item.request
        output = request.max_tokens if request.max_tokens is not None else self.params.default_output_tokens
        cost = request.prompt_tokens * self.params.input_weight + output * self.params.output_weight
        served[item.fairness_id] = served.get(item.fairness_id, 0.0) + cost
        served.move_to_end(item.fairness_id)
        while len(served) > self.params.max_tenants:
            served.popitem(last=False)
