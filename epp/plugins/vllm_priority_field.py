"""`vllm-priority-field` (ours; neither GIE nor llm-d has it): the request's InferenceObjective
priority goes to the model server as vLLM's per-request `priority` body field, so a server run
with `--scheduling-policy priority` orders its waiting queue by it and preempts the lowest
priority first when its KV cache runs out.

The signs differ: an InferenceObjective's higher priority is more important, vLLM serves lower
values first, so the field is the objective's priority negated (`critical` at 1 sends -1,
`sheddable` at -1 sends 1). The default band (0) leaves the body as it came, because vLLM
refuses any non-zero `priority` with 400 unless it runs the priority policy. A `priority` the
client sent is replaced: the gateway's objective decides, not the client. Bodies the parser does
not re-serialise (gRPC envelopes) are forwarded unchanged."""

from __future__ import annotations

from epp.framework import Plugin, register
from epp.requestcontrol import RequestHeaderProcessor
from epp.requests import InferenceRequest

FIELD = "priority"


@register
class VllmPriorityField(Plugin, RequestHeaderProcessor):
    type_name = "vllm-priority-field"

    def request_headers(self, request: InferenceRequest) -> None:
        if request.priority == 0 and FIELD not in request.body:
            return
        request.body[FIELD] = -request.priority
        request.body_changed = True
