"""Saturation: how full the pool is. Admission consults the configured detector; a detector
named in a scheduling profile also filters (GIE v1.5)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.datastore.roles import DECODE_STAGE, PREFILL_STAGE
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

    def stage_saturations(
        self, stages: Sequence[Sequence[Endpoint]], requests: int, tokens: int
    ) -> list[float]:
        """Each stage's saturation (`saturation_with` while `requests` are in flight), as one
        reading of a pool split by stage (`split_stages`): a detector that reports on its
        latest reading (utilization-detector's stale endpoints) reports on all its stages."""
        if requests:
            return [self.saturation_with(stage, requests, tokens) for stage in stages]
        return [self.saturation(stage) for stage in stages]


def split_stages(pool: Sequence[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]]:
    """The pool's prefill and decode stages, as llm-d's flow controller reads saturation: an
    endpoint without a role (or with an empty one) decodes, one that does both (`prefill-decode`,
    `both`, `encode-prefill-decode`) counts in each stage, and one that only encodes, or whose role
    is unknown, in neither (no request of either stage is routed to it)."""
    prefill: list[Endpoint] = []
    decode: list[Endpoint] = []
    for endpoint in pool:
        stages = endpoint.spec.stages
        if stages & PREFILL_STAGE:
            prefill.append(endpoint)
        if stages & DECODE_STAGE:
            decode.append(endpoint)
    return prefill, decode
