"""`max-score-picker`: the highest total score wins; ties are broken uniformly at random."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from epp.datastore import Endpoint
from epp.framework import register
from epp.requests import InferenceRequest
from epp.scheduling.pickers import CountedPicker
from epp.scheduling.scoring import max_ties


@register
class MaxScorePicker(CountedPicker):
    type_name = "max-score-picker"

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        if self.count == 1:
            # Same outcome as GIE's shuffle-then-stable-sort for one pick, without the shuffle.
            best = max(scores)
            tied = [e for e, s in zip(candidates, scores, strict=True) if s == best]
            return [tied[0] if len(tied) == 1 else self.rng.choice(tied)]
        return self._ranked(candidates, scores)

    def pick_array(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: np.ndarray
    ) -> list[Endpoint]:
        if self.count == 1:
            tied = max_ties(scores)
            return [candidates[tied[0]] if len(tied) == 1 else self.rng.choice([candidates[i] for i in tied])]
        return self._ranked(candidates, scores.tolist())

    def _ranked(self, candidates: Sequence[Endpoint], scores: Sequence[float]) -> list[Endpoint]:
        ranked = sorted(zip(candidates, scores, strict=True), key=self._ranking_key)
        return [endpoint for endpoint, _ in ranked[: self.count]]

    def _ranking_key(self, pair: tuple[Endpoint, float]) -> tuple[float, float]:
        """Score descending, then a random tiebreak: a shuffle followed by a stable sort."""
        return (-pair[1], self.rng.random())
