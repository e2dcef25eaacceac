"""`running-requests-size-scorer`: fewer running requests scores higher, min-max normalised."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.scoring import min_max_scores


@register
class RunningRequestsSizeScorer(Plugin, Scorer):
    type_name = "running-requests-size-scorer"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return min_max_scores([e.metrics.running_requests_size for e in candidates])
