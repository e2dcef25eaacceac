"""`prefix-based-pd-decider`: prefill remotely when enough of the prompt is NOT already cached on the
chosen decode endpoint. A decode pod that holds most of the prompt's KV computes the rest faster
itself than a prefill pod can compute and ship all of it.

llm-d router v0.9+ semantics (llm-d.md §1.3), in this order:
1. `nonCachedTokens == 0` disables the decider (never disaggregate; NOT "always", as it was in v0.6);
2. prompts shorter than `promptTokens` (when > 0) or than `nonCachedTokens` stay on the decode pod;
3. uncached = prompt tokens - cached tokens on the decode endpoint (whole matched blocks x block
   size, from the approximate prefix index); disaggregate iff uncached >= `nonCachedTokens`.

Prompt tokens are the EPP's estimate (token ids when the client sent ids, else bytes / 4)."""

from __future__ import annotations

import logging

from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.disagg import PrefillDecider
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch

log = logging.getLogger(__name__)


class PrefixBasedDeciderParams(PluginParams):
    non_cached_tokens: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)


@register
class PrefixBasedPDDecider(Plugin, PrefillDecider, DataConsumer):
    type_name = "prefix-based-pd-decider"
    Params = PrefixBasedDeciderParams
    consumes = {PREFIX_MATCH: ""}

    def __init__(self, name: str, params: PrefixBasedDeciderParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.non_cached_tokens = params.non_cached_tokens
        self.min_prompt_tokens = params.prompt_tokens

    def disaggregate(self, request: InferenceRequest, decode: Endpoint | None) -> bool:
        if self.non_cached_tokens == 0 or decode is None:
            return False
        prompt = request.prompt_tokens
        if prompt < self.min_prompt_tokens or prompt < self.non_cached_tokens:
            return False
        match = self.consumed(request, PREFIX_MATCH)
        if not isinstance(match, PrefixMatch):
            log.warning(
                "%s: no prefix match data for request %s; not disaggregating", self.name, request.request_id
            )
            return False
        return prompt - match.cached_tokens(decode) >= self.non_cached_tokens
