"""GIE's legacy admission: while the pool is saturated, sheddable requests (objective priority
below zero) are refused with 429 so the capacity goes to everything else. Requests with priority
zero or above are always admitted; nothing is queued."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from epp.datastore import Endpoint
from epp.flowcontrol.saturation import SaturationDetector
from epp.requests import ErrorCode, InferenceRequest, RequestError

SATURATED = 1.0
SHED_MESSAGE = "system saturated, sheddable request dropped"


class Admission(Protocol):
    """Decides whether a request may be scheduled now; raises RequestError (429) to shed it."""

    def admit(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None: ...


class AdmitAll:
    def admit(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        return None


class LegacyAdmission:
    """Implements the director's `Admission` protocol."""

    def __init__(self, detector: SaturationDetector) -> None:
        self.detector = detector

    def admit(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        if request.priority < 0 and self.detector.saturation(candidates) >= SATURATED:
            raise RequestError(ErrorCode.RESOURCE_EXHAUSTED, SHED_MESSAGE)
