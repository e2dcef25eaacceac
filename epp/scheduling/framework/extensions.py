"""Scheduling's extension points: what a profile runs (filters, scorers, a picker) and the
profile handler that decides which profiles run and turns their picks into the routing decision."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from epp.datastore import Endpoint
from epp.framework import Extension
from epp.requests import InferenceRequest
from epp.scheduling.types import ProfileResult, SchedulingResult


class Filter(Extension):
    @abstractmethod
    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        """The candidates to keep, in their original order."""


class Scorer(Extension):
    @abstractmethod
    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> Sequence[float]:
        """One score per candidate, same order; the framework clamps each to [0, 1]."""

    def score_array(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> np.ndarray:
        """The same scores as a float64 array of one score per candidate, which a
        profile asks for over many candidates; a scorer that can compute them as array
        operations overrides this to skip building a list."""
        return np.array(self.score(request, candidates), dtype=np.float64)


class Picker(Extension):
    @abstractmethod
    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        """The chosen endpoints, best first; `scores` are the weighted totals per candidate."""

    def pick_array(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: np.ndarray
    ) -> list[Endpoint]:
        """`pick` with the totals as a float64 array (a profile over many candidates); the same
        choice, which a picker can make with array operations instead of a loop."""
        return self.pick(request, candidates, scores.tolist())


class ProfileHandler(Extension):
    @classmethod
    def profile_problems(cls, params: Any, profiles: Sequence[str]) -> list[str]:
        """Config errors in how the handler's parameters name the profiles (checked at load)."""
        return []

    @abstractmethod
    def pick_profiles(
        self,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        """Profiles to run next given the results so far (None = ran and found nothing);
        an empty answer ends the scheduling cycle."""

    @abstractmethod
    def process_results(
        self, request: InferenceRequest, results: Mapping[str, ProfileResult | None]
    ) -> SchedulingResult:
        """Turn the profile results into the routing decision; raise SchedulingError to refuse."""
