"""What a scheduler returns, and the interface the request director drives it through."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from epp.datastore import Endpoint
from epp.requests import InferenceRequest, Usage


class SchedulingError(Exception):
    """No endpoint could be chosen (every candidate filtered out, or a profile failed)."""


@dataclass(slots=True)
class ProfileResult:
    targets: list[Endpoint]


@dataclass(slots=True)
class SchedulingResult:
    """Per-profile picks; the primary profile's targets are the destination, primary first."""

    profile_results: dict[str, ProfileResult | None]
    primary_profile: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def targets(self) -> list[Endpoint]:
        primary = self.profile_results.get(self.primary_profile)
        return primary.targets if primary else []


class Scheduler(Protocol):
    """Picks endpoints and learns from traffic. Implementations see only parsed requests and
    endpoint state; the director calls the hooks in order, exactly once each per request."""

    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult: ...

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None: ...

    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None: ...

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None: ...
