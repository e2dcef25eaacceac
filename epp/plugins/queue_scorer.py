"""`queue-scorer`: shorter waiting queue scores higher, min-max normalised over the candidates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.scoring import min_max_score_column, min_max_scores


@register
class QueueScorer(Plugin, Scorer):
    type_name = "queue-scorer"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return min_max_scores([e.metrics.waiting_queue_size for e in candidates])

    def score_array(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> np.ndarray:
        return min_max_score_column(candidates, "waiting_queue_size")
