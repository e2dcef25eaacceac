"""`random-picker`: endpoints uniformly at random, ignoring scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from epp.datastore import Endpoint
from epp.framework import register
from epp.requests import InferenceRequest
from epp.scheduling.pickers import CountedPicker


@register
class RandomPicker(CountedPicker):
    type_name = "random-picker"

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        return self.rng.sample(list(candidates), min(self.count, len(candidates)))

    def pick_array(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: np.ndarray
    ) -> list[Endpoint]:
        """Scores play no part: not turned into a list of a thousand floats first."""
        return self.pick(request, candidates, ())
