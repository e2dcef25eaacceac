"""`disagg-headers-handler` (llm-d; deprecated names `prefill-header-handler`, llm-d <= v0.7):
after scheduling, tell the decode pod's routing sidecar where to prefill and encode.

PreRequest, as llm-d's: drop any `x-prefiller-host-port` / `x-encoder-hosts-ports` the result
carries; then, if the `prefillProfile` profile picked an endpoint, set `x-prefiller-host-port` to
its `host:port` (IPv6 bracketed), and if the `encodeProfile` profile picked endpoints, set
`x-encoder-hosts-ports` to all of theirs, comma-separated. `disagg-profile-handler` already sets
the prefill header itself, so with it this plugin changes nothing; it matters with a profile
handler that does not (llm-d <= v0.5's `pd-profile-handler` left it to this plugin), and it keeps
configs that list it loading unchanged. A client-sent copy of either header never reaches the
model server: both are EPP-owned headers, removed from the forwarded request."""

from __future__ import annotations

from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.headers import ENCODER_HOSTS_HEADER, PREFILLER_HEADER
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.types import SchedulingResult


class DisaggHeadersParams(PluginParams):
    prefill_profile: str = "prefill"
    encode_profile: str = "encode"


@register
class DisaggHeadersHandler(Plugin, PreRequest):
    type_name = "disagg-headers-handler"
    aliases = ("prefill-header-handler",)
    Params = DisaggHeadersParams

    def __init__(self, name: str, params: DisaggHeadersParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.prefill_profile = params.prefill_profile
        self.encode_profile = params.encode_profile

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        result.headers.pop(PREFILLER_HEADER, None)
        prefill = result.profile_results.get(self.prefill_profile)
        if prefill is not None and prefill.targets:
            result.headers[PREFILLER_HEADER] = prefill.targets[0].hostport
        result.headers.pop(ENCODER_HOSTS_HEADER, None)
        encode = result.profile_results.get(self.encode_profile)
        if encode is not None and encode.targets:
            result.headers[ENCODER_HOSTS_HEADER] = ",".join(e.hostport for e in encode.targets)
