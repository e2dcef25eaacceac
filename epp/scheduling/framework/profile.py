"""A scheduling profile: filters in order, then weighted scorers, then one picker."""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter

from epp.datastore import Endpoint
from epp.explain import DecisionRecord, ProfileRecord
from epp.framework import timing
from epp.metrics.exporter import EppMetrics
from epp.requests import InferenceRequest
from epp.scheduling.framework.extensions import Filter, Picker, Scorer
from epp.scheduling.scoring import weighted_totals
from epp.scheduling.types import ProfileResult

# From this many candidates the totals are summed as arrays (cheaper from about 128 candidates;
# below that numpy's per-call cost outweighs the loop it replaces).
VECTOR_MIN_CANDIDATES = 128


class SchedulerProfile:
    """Runs one profile over the candidates. Semantics follow GIE: filters stop early once nothing
    is left (a failed profile, None); each score is clamped to [0, 1] and added with its absolute
    weight; the picker sees every surviving candidate with its total."""

    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
        metrics: EppMetrics,
    ) -> None:
        self.name = name
        self._filters = [(f, timing.observer(metrics, timing.FILTER, f)) for f in filters]
        self._scorers = [(s, weight, timing.observer(metrics, timing.SCORER, s)) for s, weight in scorers]
        self._weights = tuple(float(weight) for _, weight in scorers)  # one per row
        self._picker = picker
        self._observe_picker = timing.observer(metrics, timing.PICKER, picker)
        self.keep_scores = False  # put each candidate's total in the result (--emit-endpoint-scores)

    def run(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        record: DecisionRecord | None = None,
    ) -> ProfileResult | None:
        """With a `record` (a sampled request), what each step did is kept in it; without one the
        loop allocates nothing more than it needs to decide."""
        step = record.profile(self.name, candidates) if record is not None else None
        endpoints = list(candidates)
        for filter_plugin, observe in self._filters:
            started = perf_counter()
            endpoints = filter_plugin.filter(request, endpoints)
            elapsed = perf_counter() - started
            observe(elapsed)
            if step is not None:
                step.filtered(filter_plugin, endpoints, elapsed)
            if not endpoints:
                return None
        if len(endpoints) >= VECTOR_MIN_CANDIDATES:
            return self._score_vectorized(request, endpoints, step)
        totals = [0.0] * len(endpoints)
        for scorer, weight, observe in self._scorers:
            started = perf_counter()
            scores = scorer.score(request, endpoints)
            elapsed = perf_counter() - started
            observe(elapsed)
            if step is not None:
                step.scored_by(scorer, weight, endpoints, scores, elapsed)
            # `not s >= 0.0` also catches NaN, which would otherwise poison the sum.
            totals = [
                total + weight * (0.0 if not s >= 0.0 else 1.0 if s > 1.0 else s)
                for total, s in zip(totals, scores, strict=True)
            ]
        return self._pick(request, endpoints, totals, step)

    def _score_vectorized(
        self, request: InferenceRequest, endpoints: list[Endpoint], step: ProfileRecord | None
    ) -> ProfileResult | None:
        """The same sums with scores, clamping, weighting and the pick as array operations: over
        1,000 candidates a Python loop per scorer cost about 50 us, these a fraction of that.
        Every operation is the same IEEE double operation in the same order (`total + weight *
        score`, NaN and negatives to 0, above 1 to 1), so the totals are the same floats. The
        scorers' rows are clamped, weighted and summed as one matrix: five numpy calls whatever
        the number of scorers, where a pass per scorer took six; one C call where built
        (`epp.scheduling.scoring.weighted_totals`)."""
        count = len(endpoints)
        rows = []
        for scorer, weight, observe in self._scorers:
            started = perf_counter()
            scores = scorer.score_array(request, endpoints)
            elapsed = perf_counter() - started
            observe(elapsed)
            if step is not None:
                step.scored_by(scorer, weight, endpoints, scores.tolist(), elapsed)
            if scores.shape != (count,):
                raise ValueError(f"{len(scores)} scores for {count} candidates")
            rows.append(scores)
        totals = weighted_totals(rows, self._weights, count)
        started = perf_counter()
        picked = self._picker.pick_array(request, endpoints, totals)
        listed = totals.tolist() if step is not None or self.keep_scores else ()
        return self._picked(endpoints, listed, picked, started, step)

    def _pick(
        self,
        request: InferenceRequest,
        endpoints: list[Endpoint],
        totals: list[float],
        step: ProfileRecord | None,
    ) -> ProfileResult | None:
        started = perf_counter()
        picked = self._picker.pick(request, endpoints, totals)
        return self._picked(endpoints, totals, picked, started, step)

    def _picked(
        self,
        endpoints: list[Endpoint],
        totals: Sequence[float],
        picked: list[Endpoint],
        started: float,
        step: ProfileRecord | None,
    ) -> ProfileResult | None:
        elapsed = perf_counter() - started
        self._observe_picker(elapsed)
        if step is not None:
            step.picked_by(self._picker, endpoints, totals, picked, elapsed)
        if not picked:
            return None
        if self.keep_scores and self._scorers:
            return ProfileResult(picked, {e.hostport: t for e, t in zip(endpoints, totals, strict=True)})
        return ProfileResult(picked)
