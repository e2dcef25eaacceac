"""Saturation: how full the pool is. Admission consults the configured detector; a detector
named in a scheduling profile also filters (GIE v1.5)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import Extension


class SaturationDetector(Extension):
    @abstractmethod
    def saturation(self, candidates: Sequence[Endpoint]) -> float:
        """Pool saturation over these endpoints; 1.0 or more means saturated."""

    def saturation_with(self, candidates: Sequence[Endpoint], requests: int, tokens: int) -> float:
        """Saturation with `requests` more in flight (`tokens`: their prompt tokens): requests
        flow control dispatched that are not charged to an endpoint yet, their async data
        producers still running. A detector that does not count in-flight work (one reading the
        model servers' metrics) reads as without them."""
        return self.saturation(candidates)
