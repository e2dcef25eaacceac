"""`token-rate-limit-admitter`: token budgets per tenant and per model, in fixed windows (Kthena's
token rate limit, as an admission plugin). A request is refused with 429 and `Retry-After` (the
seconds left in the window) when its tenant (fairness id, `x-gateway-inference-fairness-id`) has
used `tenantTokensPerWindow` tokens in the current `window`, or its model `modelTokensPerWindow`.
Admission charges the prompt's tokens; the end of the response charges the completion tokens the
model server reported (so a budget can be overrun by the requests in flight when it runs out, as
in Kthena). 0 turns a budget off. At most `maxKeys` tenants and models are tracked; past that the
least recently charged ones are forgotten (they start the window afresh); those last charged in a
past window are forgotten as soon as the current window's are charged."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from pydantic import Field

from epp.datastore import Endpoint
from epp.explain import bounded_id
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.params.values import Duration
from epp.requestcontrol import AdmitRequest, ResponseComplete
from epp.requests import ErrorCode, InferenceRequest, RequestError, Usage
from epp.scheduling.types import SchedulingResult


class TokenRateLimitParams(PluginParams):
    window: Duration = Field(default=60.0, gt=0.0, le=86_400.0)
    tenant_tokens_per_window: int = Field(default=0, ge=0)
    model_tokens_per_window: int = Field(default=0, ge=0)
    max_keys: int = Field(default=100_000, gt=0)


@register
class TokenRateLimitAdmitter(Plugin, AdmitRequest, ResponseComplete):
    type_name = "token-rate-limit-admitter"
    Params = TokenRateLimitParams

    def __init__(self, name: str, params: TokenRateLimitParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self._clock = context.clock
        self._used: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()  # key -> (window, tokens)

    def _window(self) -> float:
        now = self._clock()
        return now - now % self.params.window

    def _budgets(self, request: InferenceRequest) -> list[tuple[tuple[str, str], int]]:
        budgets = []
        if self.params.tenant_tokens_per_window:
            budgets.append((("tenant", request.fairness_id), self.params.tenant_tokens_per_window))
        if self.params.model_tokens_per_window:
            # Kept as records keep a client's id (the fairness id is bounded already): a model
            # name can be as long as a body, and up to `maxKeys` of them are held.
            budgets.append((("model", bounded_id(request.target_model)), self.params.model_tokens_per_window))
        return budgets

    def used(self, key: tuple[str, str]) -> int:
        window, tokens = self._used.get(key, (0.0, 0))
        return tokens if window == self._window() else 0

    def admit_request(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        budgets = self._budgets(request)
        for key, budget in budgets:
            used = self.used(key)
            if used >= budget:
                left = self._window() + self.params.window - self._clock()
                raise RequestError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"token budget exhausted: {key[0]} {key[1]!r} used {used} of its {budget} tokens "
                    f"per {self.params.window:g}s window; retry in {math.ceil(left)}s",
                    retry_after=max(1, math.ceil(left)),
                )
        for key, _ in budgets:
            self._charge(key, request.prompt_tokens)

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        if usage is None or usage.completion_tokens <= 0:
            return
        for key, _ in self._budgets(request):
            self._charge(key, usage.completion_tokens)

    def _charge(self, key: tuple[str, str], tokens: int) -> None:
        window = self._window()
        used = self._used
        used[key] = (window, self.used(key) + tokens)
        used.move_to_end(key)
        # Least recently charged first: the entries of past windows lead, and count for nothing.
        dropped = 0
        while len(used) > self.params.max_keys or next(iter(used.values()))[0] != window:
            used.popitem(last=False)
            dropped += 1
        if dropped > len(used):  # a dict keeps its table when emptied: copy what is left
            self._used = OrderedDict(used)
