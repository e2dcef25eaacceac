"""`weighted-random-picker`: sample endpoints in proportion to their scores (A-Res: key U^(1/score),
largest keys win). Zero scores never win against positive ones; all zero is a uniform pick."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import register
from epp.requests import InferenceRequest
from epp.scheduling.pickers import CountedPicker


@register
class WeightedRandomPicker(CountedPicker):
    type_name = "weighted-random-picker"

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        count = min(self.count, len(candidates))
        if not any(s > 0 for s in scores):
            return self.rng.sample(list(candidates), count)
        keys = [self._key(s) for s in scores]
        order = sorted(range(len(candidates)), key=keys.__getitem__, reverse=True)
        return [candidates[i] for i in order[:count]]

    def _key(self, score: float) -> float:
        if score <= 0:
            return 0.0
        uniform = 1.0 - self.rng.random()  # in (0, 1]: never 0, which would erase the weighting
        return uniform ** (1.0 / score)
