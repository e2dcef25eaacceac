"""One (workload, policy, rate)'s runs over several seeds, folded into their mean.

A knee's TTFT p90 moves by 10-20 % with nothing but the routing plugins' coin flips and the
workload's draws (docs/benchmarks.md, "Routing coin flips"), so one run cannot tell a 3 % goal. The
report folds each (workload, policy, rate)'s runs over the (routing seed, workload seed) pairs present
into one: every figure's mean over the runs (a TTFT p90 is the mean of the runs' p90s, not the p90 of
their pooled requests), errors summed so a rate with errors on any seed does not meet the SLO, and
each figure's range kept beside it. The SLO is then applied once, to the mean curve: applying it per
seed picks, seed by seed, whichever rate that draw happened to keep under it, and a best-over-rates
of noisy runs favours the lucky ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

from epp.bench.suite import Engine, RunKey, RunOutcome
from epp.bench.summary import Summary

Figure = Callable[[Summary], float]
Point = tuple[str, str, float, Engine]
"""(workload, policy, rate, engine): what the seeds vary over."""

_COUNTS = frozenset(f.name for f in fields(Summary) if f.type in (int, "int"))


def point(key: RunKey) -> Point:
    return key.workload, key.policy, key.rate, key.engine


@dataclass(frozen=True)
class Seeded:
    """One point's runs, one per (routing seed, workload seed)."""

    runs: tuple[RunOutcome, ...]

    @property
    def count(self) -> int:
        return len(self.runs)

    @cached_property
    def mean(self) -> RunOutcome:
        """The runs' mean, keyed by the point alone; a single run is itself."""
        if len(self.runs) == 1:
            return self.runs[0]
        workload, policy, rate, engine = point(self.runs[0].key)
        served: dict[str, int] = {}
        for run in self.runs:
            for endpoint, requests in run.served.items():
                served[endpoint] = served.get(endpoint, 0) + requests
        return RunOutcome(
            RunKey(workload, policy, rate, engine),
            mean_summary([run.summary for run in self.runs]),
            sum(run.wall_seconds for run in self.runs),
            served,
        )

    def span(self, figure: Figure) -> tuple[float, float]:
        values = [figure(run.summary) for run in self.runs]
        return min(values), max(values)


def mean_summary(summaries: list[Summary]) -> Summary:
    """Each figure's mean; counts rounded, errors summed (any error on any seed counts)."""
    values: dict[str, Any] = {}
    for name in (f.name for f in fields(Summary)):
        column = [getattr(s, name) for s in summaries]
        if name == "errors":
            values[name] = sum(column)
        elif name in _COUNTS:
            values[name] = round(statistics.fmean(column))
        else:
            values[name] = statistics.fmean(column)
    return Summary(**values)


def by_point(outcomes: Iterable[RunOutcome]) -> dict[Point, Seeded]:
    """The outcomes grouped by point, in order of first appearance."""
    groups: dict[Point, list[RunOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault(point(outcome.key), []).append(outcome)
    return {at: Seeded(tuple(runs)) for at, runs in groups.items()}


def seeds_note(groups: dict[Point, Seeded], workloads: Iterable[str]) -> str:
    """Which seeds the means are over, per workload; empty when every point has one run."""
    if all(group.count == 1 for group in groups.values()):
        return ""
    lines = []
    for workload in workloads:
        runs = [run for at, group in groups.items() if at[0] == workload for run in group.runs]
        if not runs:
            continue
        routing = sorted({run.key.seed for run in runs})
        drawn = sorted({run.key.workload_seed for run in runs}, key=lambda s: (s is None, s or 0))
        pairs = {(run.key.seed, run.key.workload_seed) for run in runs}
        lines.append(
            f"- `{workload}`: {len(pairs)} seed pairs, routing seeds {_listed(routing)} x workload "
            f"seeds {_listed(drawn)}"
        )
    return "\n".join(
        [
            "Every figure is the mean over the runs of its (workload, policy, rate), one per seed "
            "pair (TTFT p90: the mean of the runs' p90s), with their range (lowest to highest) in "
            "brackets; the SLO is applied to the means:",
            "",
            *lines,
        ]
    )


def _listed(values: Iterable[int | None]) -> str:
    return ", ".join("the file's" if v is None else str(v) for v in values)
