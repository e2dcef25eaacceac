"""`context-length-aware` (llm-d): send requests to the pods sized for their context length.

Pods carry a label (`label`, default `llm-d.ai/context-length-range`) `"<min>-<max>"` in tokens.
As llm-d's, for a request of n prompt tokens:
- score: unlabelled pods 0.5; a malformed range 0; n inside the range:
  0.3 + 0.7 x (0.7 x 1/(1 + width/10000) + 0.3 x (max - n)/width) (a zero-width range: 1.0), so
  tighter ranges and more headroom score higher; outside it: 0.3 / (1 + distance/1000);
- filter (only with `enableFiltering: true`, else it keeps everyone): keep unlabelled pods and the
  pods whose range contains n (malformed ranges are dropped).
n is the EPP's prompt-token count (token ids when the client sent them, else bytes / 4) where
llm-d uses its token producer's count."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter, Scorer

DEFAULT_LABEL = "llm-d.ai/context-length-range"
FALLBACK = 0.3


class ContextLengthAwareParams(PluginParams):
    label: str = Field(default=DEFAULT_LABEL, min_length=1)
    enable_filtering: bool = False


def parse_range(text: str) -> tuple[int, int] | None:
    """(min, max) from `"min-max"`; None when malformed (or min > max)."""
    bounds = text.split("-")
    if len(bounds) != 2:
        return None
    try:
        low, high = int(bounds[0].strip()), int(bounds[1].strip())
    except ValueError:
        return None
    return (low, high) if low <= high else None


def range_score(length: int, low: int, high: int) -> float:
    if low <= length <= high:
        width = high - low
        if width == 0:
            return 1.0
        raw = 0.7 * (1.0 / (1.0 + width / 10000.0)) + 0.3 * ((high - length) / width)
        return FALLBACK + raw * (1.0 - FALLBACK)
    distance = length - high if length > high else low - length
    return FALLBACK / (1.0 + distance / 1000.0)


@register
class ContextLengthAware(Plugin, Filter, Scorer):
    type_name = "context-length-aware"
    Params = ContextLengthAwareParams

    def __init__(self, name: str, params: ContextLengthAwareParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.label = params.label
        self.filtering = params.enable_filtering

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        if not self.filtering:
            return candidates
        length = request.prompt_tokens
        kept = []
        for endpoint in candidates:
            text = endpoint.spec.labels.get(self.label)
            if text is None:
                kept.append(endpoint)
                continue
            bounds = parse_range(text)
            if bounds is not None and bounds[0] <= length <= bounds[1]:
                kept.append(endpoint)
        return kept

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        length = request.prompt_tokens
        scores = []
        for endpoint in candidates:
            text = endpoint.spec.labels.get(self.label)
            if text is None:
                scores.append(0.5)
                continue
            bounds = parse_range(text)
            scores.append(0.0 if bounds is None else range_score(length, *bounds))
        return scores
