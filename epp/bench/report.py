"""Results -> the generated parts of docs/benchmarks.md (tables, goal checks) and PNG plots.

The document is prose written by hand plus blocks between `<!-- BEGIN GENERATED: name -->` and
`<!-- END GENERATED: name -->` markers; `write_block` replaces one block and leaves the rest, so
rerunning a benchmark never clobbers the explanations around its numbers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path

from epp.bench.seeds import Figure, Seeded, by_point, point, seeds_note
from epp.bench.suite import RunFormatError, RunKey, RunOutcome, Suite
from epp.bench.workload import WorkloadSpec

NONE = "n/a"
COLUMNS = (
    "policy",
    "out tok/s",
    "TTFT p50",
    "TTFT p90",
    "TTFT p99",
    "ITL p50",
    "ITL p99",
    "e2e p99",
    "hit",
    "imbalance",
    "errors",
)


class ResultsError(ValueError):
    """A results file that cannot be read as runs; the message names the file and the fault."""


def load_results(path: Path, workload_seeds: Mapping[str, int] | None = None) -> list[RunOutcome]:
    """`workload_seeds`: each workload's file seed, the one runs recorded before seeds were used.
    An empty file holds no runs."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsError(f"--results {path}: no such file") from None
    if not text.strip():
        return []
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"--results {path} is not JSON: {exc}") from None
    if not isinstance(items, list):
        got = "an object" if isinstance(items, dict) else f"{items!r:.60}"
        raise ResultsError(f"--results {path} is not a results file: a JSON list of runs expected, got {got}")
    numbers: dict[RunKey, int] = {}  # each run's number in the file, by key
    outcomes = []
    for number, item in enumerate(items, 1):
        try:
            outcome = RunOutcome.from_dict(item, workload_seeds)
        except RunFormatError as exc:
            raise ResultsError(f"--results {path} run {number}: {exc}") from None
        key = outcome.key
        if key in numbers:  # both would count in the mean, as two seed pairs
            raise ResultsError(
                f"--results {path} run {number} repeats run {numbers[key]} ({key.workload}, {key.policy}, "
                f"rate {key.rate:g}, {key.engine}, seed {key.seed}, workload seed {key.workload_seed}): "
                "keep one of them"
            )
        numbers[key] = number
        outcomes.append(outcome)
    return outcomes


def save_results(
    path: Path, outcomes: Iterable[RunOutcome], workload_seeds: Mapping[str, int] | None = None
) -> None:
    """Merge into an existing results file: a rerun replaces the runs with the same key (seeds
    included; `workload_seeds` dates the file's runs recorded before seeds were)."""
    merged = {o.key: o for o in (load_results(path, workload_seeds) if path.exists() else [])}
    merged.update((o.key, o) for o in outcomes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([o.as_dict() for o in merged.values()], indent=1) + "\n")


def seconds(value: float) -> str:
    if math.isnan(value):
        return NONE
    if value >= 10:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.1f} s"
    return f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"


def row(outcome: RunOutcome, label: str) -> list[str]:
    s = outcome.summary
    return [
        label,
        f"{s.output_tokens_per_s:,.0f}",
        seconds(s.ttft_p50),
        seconds(s.ttft_p90),
        seconds(s.ttft_p99),
        seconds(s.itl_p50),
        seconds(s.itl_p99),
        seconds(s.e2e_p99),
        f"{s.hit_rate:.0%}",
        NONE if math.isnan(s.imbalance) else f"{s.imbalance:.2f}",
        str(s.errors),
    ]


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(r) + " |" for r in rows)
    return "\n".join(lines)


@dataclass(frozen=True)
class Results:
    """Outcomes of one engine, one per (workload, policy, rate), indexed for the report; runs over
    several seeds are folded into their means first (`epp.bench.seeds`)."""

    outcomes: Sequence[RunOutcome]

    def get(self, workload: str, policy: str, rate: float) -> RunOutcome | None:
        for o in self.outcomes:
            if (o.key.workload, o.key.policy, o.key.rate) == (workload, policy, rate):
                return o
        return None

    def series(self, workload: str, policy: str) -> list[RunOutcome]:
        found = [o for o in self.outcomes if o.key.workload == workload and o.key.policy == policy]
        return sorted(found, key=lambda o: o.key.rate)

    def rates(self, workload: str) -> list[float]:
        return sorted({o.key.rate for o in self.outcomes if o.key.workload == workload})

    def throughput_at_slo(self, workload: str, policy: str, slo: float) -> RunOutcome | None:
        """The highest-throughput run of this policy whose TTFT p90 meets the SLO without errors."""
        meeting = [
            o for o in self.series(workload, policy) if o.summary.ttft_p90 <= slo and not o.summary.errors
        ]
        return max(meeting, key=lambda o: o.summary.output_tokens_per_s, default=None)


def workload_section(suite: Suite, results: Results, workload: WorkloadSpec, plot: str | None) -> str:
    name = workload.name
    slo = suite.spec.slo_ttft_p90
    labels = {p.name: p.label or p.name for p in suite.spec.policies}
    policies = [p.name for p in suite.spec.policies if results.series(name, p.name)]
    parts = [f"### {name}", "", workload.description, ""]
    at_slo = []
    for policy in policies:
        best = results.throughput_at_slo(name, policy, slo)
        at_slo.append(
            [
                labels[policy],
                NONE if best is None else f"{best.summary.output_tokens_per_s:,.0f}",
                "none met it" if best is None else f"{best.key.rate:g}",
            ]
        )
    parts += [
        f"Throughput at the SLO (TTFT p90 ≤ {slo:g} s, no errors), best over the tested rates:",
        "",
        table(["policy", "out tok/s at SLO", "at rate (req/s)"], at_slo),
        "",
    ]
    for rate in results.rates(name):
        rows = [row(o, labels[p]) for p in policies if (o := results.get(name, p, rate)) is not None]
        parts += [f"At {rate:g} requests/s:", "", table(COLUMNS, rows), ""]
    if plot:
        parts += [f"![{name}: throughput and TTFT p90 against the offered rate]({plot})", ""]
    return "\n".join(parts)


GOALS = (("random", 3.0, 0.2), ("round-robin", 3.0, 0.2), ("gie-default", 0.0, 0.85))
"""(rival, minimum throughput ratio at the SLO or 0 for none, maximum TTFT p90 ratio at every rate)."""


def goals_section(suite: Suite, results: Results, workload: str) -> str:
    """The issue's goals for the headline policy on the headline workload, as measured."""
    ours = suite.spec.headline
    if not results.series(workload, ours):
        return f"No runs of the headline policy `{ours}` on `{workload}`."
    slo = suite.spec.slo_ttft_p90
    best = results.throughput_at_slo(workload, ours, slo)
    ours_tps = best.summary.output_tokens_per_s if best else 0.0
    rows = []
    for rival, want_tps, want_ttft in GOALS:
        if not results.series(workload, rival):
            continue
        rival_best = results.throughput_at_slo(workload, rival, slo)
        rival_tps = rival_best.summary.output_tokens_per_s if rival_best else 0.0
        tps_ratio = ours_tps / rival_tps if rival_tps else (math.inf if ours_tps else math.nan)
        ttft = [
            (rate, mine.summary.ttft_p90 / theirs.summary.ttft_p90)
            for rate in results.rates(workload)
            if (mine := results.get(workload, ours, rate))
            and (theirs := results.get(workload, rival, rate))
            and theirs.summary.ttft_p90 > 0
        ]
        worst_rate, worst = max(ttft, key=lambda pair: pair[1])
        verdict = []
        if want_tps:
            met = tps_ratio >= want_tps
            verdict.append(f"throughput {'met' if met else 'SHORT'} (goal ≥ {want_tps:g}x)")
        met = worst <= want_ttft
        verdict.append(
            f"TTFT {'met at every rate' if met else f'SHORT at {worst_rate:g} req/s'} (goal ≤ {want_ttft:g})"
        )
        rows.append(
            [
                rival,
                "∞ (they never meet it)" if math.isinf(tps_ratio) else f"{tps_ratio:.2f}x",
                ", ".join(f"{r:g}: {q:.3f}" for r, q in ttft),
                "; ".join(verdict),
            ]
        )
    header = [
        "vs",
        f"out tok/s at SLO ({slo:g} s), ours / theirs",
        "TTFT p90 ours / theirs, by rate",
        "verdict",
    ]
    return "\n\n".join(
        [
            f"Headline policy `{ours}` on `{workload}`:",
            table(header, rows),
            "The throughput ratio depends on the SLO; at other TTFT p90 limits:",
            slo_sensitivity(results, workload, ours, [rival for rival, _, _ in GOALS]),
        ]
    )


TTFT_P90: Figure = attrgetter("ttft_p90")
OUTPUT_TPS: Figure = attrgetter("output_tokens_per_s")

BASELINE = "gie-default"
PRESSURE_GOALS = (0.85, 1.10)
"""Under cache pressure the headline policy's TTFT p90 at most 0.85x the baseline's, at the highest
rate where the baseline meets the SLO, and its output tokens/s at the SLO at least 1.10x."""
PAR = 0.03
"""Elsewhere, both figures within 3 % of the baseline's (nothing lost where there is no pressure)."""


def versus_section(suite: Suite, results: Results, baseline: str = BASELINE) -> str:
    """Every policy against `baseline` on every workload, in the two figures the precise-prefix goals
    name: TTFT p90 at the highest tested rate where the baseline meets the SLO, and output tokens/s
    at the SLO (best over the tested rates); the headline policy's row carries the verdict. Runs
    over several seeds count as their mean (`epp.bench.seeds`), shown with their range and count."""
    groups = by_point(results.outcomes)
    several = any(group.count > 1 for group in groups.values())
    results = Results([group.mean for group in groups.values()])
    slo = suite.spec.slo_ttft_p90
    rows = []
    for workload in (w.name for w in suite.workloads()):
        meeting = [
            o
            for o in results.series(workload, baseline)
            if o.summary.ttft_p90 <= slo and not o.summary.errors
        ]
        base_best = results.throughput_at_slo(workload, baseline, slo)
        if not meeting or base_best is None:
            continue
        base_at = meeting[-1]  # the series is sorted by rate
        rate = base_at.key.rate
        for policy in (p.name for p in suite.spec.policies):
            at = results.get(workload, policy, rate)
            if at is None:
                continue
            best = results.throughput_at_slo(workload, policy, slo)
            ttft_ratio = at.summary.ttft_p90 / base_at.summary.ttft_p90
            tps = best.summary.output_tokens_per_s if best else 0.0
            tps_ratio = tps / base_best.summary.output_tokens_per_s
            verdict = ""
            if policy == suite.spec.headline:
                verdict = _verdict(workload in suite.spec.pressure_workloads, ttft_ratio, tps_ratio)
            rows.append(
                [
                    workload,
                    policy,
                    f"{rate:g}",
                    *([str(groups[point(at.key)].count)] if several else []),
                    _spread(groups[point(at.key)], TTFT_P90, seconds),
                    f"{ttft_ratio:.2f}x",
                    NONE if best is None else _at_rate(groups[point(best.key)]),
                    f"{tps_ratio:.2f}x",
                    f"{at.summary.hit_rate:.0%}",
                    verdict,
                ]
            )
    header = [
        "workload",
        "policy",
        f"rate (req/s): {baseline}'s highest meeting the SLO",
        *(["runs (seed pairs) there"] if several else []),
        "TTFT p90 there",
        f"/ {baseline}",
        f"out tok/s at SLO ({slo:g} s)",
        f"/ {baseline}",
        "hit there",
        f"headline ({suite.spec.headline}) goal",
    ]
    note = seeds_note(groups, [w.name for w in suite.workloads()])
    return "\n\n".join([*([note] if note else []), table(header, rows)])


def _spread(group: Seeded, figure: Figure, shown: Callable[[float], str]) -> str:
    """A figure's mean, with its range over the seeds when there are several."""
    text = shown(figure(group.mean.summary))
    if group.count == 1:
        return text
    low, high = group.span(figure)
    return f"{text} ({shown(low)} to {shown(high)})"


def _at_rate(group: Seeded) -> str:
    """Output tokens/s at the SLO (over several seeds, with their range there) and its rate."""
    return f"{_spread(group, OUTPUT_TPS, lambda tps: f'{tps:,.0f}')} (at {group.mean.key.rate:g})"


def _verdict(pressure: bool, ttft_ratio: float, tps_ratio: float) -> str:
    if pressure:
        want_ttft, want_tps = PRESSURE_GOALS
        return (
            f"TTFT {'met' if ttft_ratio <= want_ttft else 'SHORT'} (≤ {want_ttft:g}x); "
            f"throughput {'met' if tps_ratio >= want_tps else 'SHORT'} (≥ {want_tps:g}x)"
        )
    met = ttft_ratio <= 1 + PAR and tps_ratio >= 1 - PAR
    return f"within {PAR:.0%}: {'met' if met else 'SHORT'}"


SENSITIVITY_SLOS = (0.5, 1.0, 2.0, 5.0)


def slo_sensitivity(results: Results, workload: str, ours: str, rivals: Sequence[str]) -> str:
    """Ours over each rival in throughput at the SLO, for several SLOs."""
    rows = []
    for rival in rivals:
        if not results.series(workload, rival):
            continue
        cells = [rival]
        for slo in SENSITIVITY_SLOS:
            mine = results.throughput_at_slo(workload, ours, slo)
            theirs = results.throughput_at_slo(workload, rival, slo)
            if mine is None:
                cells.append("ours never meets it")
            elif theirs is None:
                cells.append("∞ (they never meet it)")
            else:
                cells.append(f"{mine.summary.output_tokens_per_s / theirs.summary.output_tokens_per_s:.2f}x")
        rows.append(cells)
    return table(["vs", *(f"SLO {slo:g} s" for slo in SENSITIVITY_SLOS)], rows)


def plot_workload(results: Results, suite: Suite, workload: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {p.name: p.label or p.name for p in suite.spec.policies}
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy in labels:
        series = results.series(workload, policy)
        if not series:
            continue
        rates = [o.key.rate for o in series]
        style = "-o" if policy == suite.spec.headline else "--."
        left.plot(
            rates, [o.summary.output_tokens_per_s for o in series], style, label=labels[policy], markersize=3
        )
        right.plot(rates, [o.summary.ttft_p90 for o in series], style, label=labels[policy], markersize=3)
    left.set(xlabel="offered rate (requests/s)", ylabel="output tokens/s", title=f"{workload}: throughput")
    right.set(
        xlabel="offered rate (requests/s)", ylabel="TTFT p90 (s)", title=f"{workload}: TTFT p90", yscale="log"
    )
    right.axhline(suite.spec.slo_ttft_p90, color="grey", linewidth=0.8, linestyle=":")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    left.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine_notes(command: str) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return "\n".join(
        [
            f"- command: `{command}`",
            f"- machine: {os.cpu_count()} x {cpu}, {platform.system()} {platform.release()}, "
            f"Python {sys.version.split()[0]}",
            f"- commit: {commit.stdout.strip() or 'unknown'}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        ]
    )


def render_results(
    suite: Suite, outcomes: Sequence[RunOutcome], image_dir: Path, doc: Path, command: str
) -> str:
    groups = by_point(outcomes)
    results = Results([group.mean for group in groups.values()])
    note = seeds_note(groups, [w.name for w in suite.workloads()])
    parts = [machine_notes(command), "", *([note, ""] if note else [])]
    workloads = [w for w in suite.workloads() if results.rates(w.name)]
    for workload in workloads:
        image = image_dir / f"bench-{workload.name}.png"
        plot_workload(results, suite, workload.name, image)
        parts.append(workload_section(suite, results, workload, os.path.relpath(image, doc.parent)))
    if suite.spec.headline and workloads:
        parts.append("### Goals\n\n" + goals_section(suite, results, workloads[0].name))
    return "\n".join(parts)


def write_block(doc: Path, name: str, content: str) -> None:
    """Replace the generated block `name` in `doc` (appending it if the markers are missing)."""
    begin, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
    block = f"{begin}\n{content.rstrip()}\n{end}"
    text = doc.read_text() if doc.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)  # a function: `block` is literal, not a template
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def publish(text: str, doc: Path | None, block: str) -> None:
    """Print a command's result and, given a document, also put it in that document's block."""
    print(text)
    if doc is not None:
        write_block(doc, block, text)
