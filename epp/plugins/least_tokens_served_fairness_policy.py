"""`least-tokens-served-fairness-policy`: between the tenants (fairness ids) of a band, serve the
one that has received the fewest tokens, in the spirit of VTC (Sheng et al., "Fairness in Serving
Large Language Models", OSDI '24: the Virtual Token Counter). Each dispatched request charges its
tenant prompt tokens x `inputWeight` + expected output tokens (its `max_tokens`, else
`defaultOutputTokens`) x `outputWeight`. A tenant that starts waiting (a new one, or one whose
queue had emptied) is lifted to the smallest count among the tenants that were already waiting
(VTC's counter lift), so time spent idle earns no credit to monopolise the band later; a new
tenant with nobody else waiting starts at the smallest count among those waiting with it. Equal
counts go to the tenant served least recently. Counts of at most `maxTenants` tenants are kept
(least recently served forgotten first: a forgotten tenant is lifted like a new one). Not a GIE
policy; GIE's are `global-strict-fairness-policy` and `round-robin-fairness-policy`."""

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

    def new_state(self) -> _Counts:
        return _Counts()

    def pick(self, band: Band) -> Flow | None:
        counts: _Counts = band.fairness_state
        flows = band.flows
        if not flows:
            counts.waiting = {}
            return None
        served, waiting = counts.served, counts.waiting
        # Tenants waiting since the last pick (the same flow: their queue never emptied).
        steady = [served[fid][0] for fid, flow in flows.items() if waiting.get(fid) is flow and fid in served]
        if steady:
            floor = min(steady)
        else:
            known = [served[fid][0] for fid in flows if fid in served]
            floor = min(known) if known else 0.0
        best: Flow | None = None
        best_key = (0.0, 0.0)
        for fid, flow in flows.items():
            entry = served.get(fid)
            if entry is None:
                entry = served[fid] = [floor, -1]
            elif waiting.get(fid) is not flow and entry[0] < floor:
                entry[0] = floor  # started waiting: no credit for the time it was idle
            key = (entry[0], entry[1])
            if best is None or key < best_key:
                best, best_key = flow, key
        counts.waiting = dict(flows)
        return best

    def dispatched(self, band: Band, item: QueuedRequest) -> None:
        counts: _Counts = band.fairness_state
        served = counts.served
        request = item.request
        output = request.max_tokens if request.max_tokens is not None else self.params.default_output_tokens
        cost = request.prompt_tokens * self.params.input_weight + output * self.params.output_weight
        entry = served.get(item.fairness_id)
        if entry is None:
            entry = served[item.fairness_id] = [0.0, 0]
        counts.sequence += 1
        entry[0] += cost
        entry[1] = counts.sequence
        served.move_to_end(item.fairness_id)
        while len(served) > self.params.max_tenants:
            served.popitem(last=False)


class _Counts:
    """A band's state: per tenant [tokens served, when last served], least recently served first;
    and the flows that were waiting at the last pick (to tell who started waiting since)."""

    __slots__ = ("sequence", "served", "waiting")

    def __init__(self) -> None:
        self.served: OrderedDict[str, list[float]] = OrderedDict()
        self.waiting: dict[str, Flow] = {}
        self.sequence = 0
