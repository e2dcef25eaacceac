"""Runs over several seeds folded into their mean, and the versus block judged on it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from epp.bench.report import Results, render_results, versus_section
from epp.bench.seeds import by_point, mean_summary, seeds_note
from epp.bench.suite import PolicySpec, RunKey, RunOutcome, Suite, SuiteSpec
from tests.unit.bench.test_bench_report import BASE

BENCH = Path(__file__).parents[3] / "bench"


def run(
    policy: str,
    rate: float,
    tps: float,
    ttft_p90: float,
    seed: int = 0,
    workload_seed: int = 7,
    errors: int = 0,
) -> RunOutcome:
    summary = replace(BASE, output_tokens_per_s=tps, ttft_p90=ttft_p90, errors=errors, hit_rate=tps / 1000)
    key = RunKey("cache-pressure", policy, rate, "virtual", seed, workload_seed)
    return RunOutcome(key, summary, 2.0, {"sim-0": 10, f"sim-{seed + 1}": 1})


def test_mean_summary_averages_figures_rounds_counts_and_sums_errors() -> None:
    one = replace(BASE, requests=10, completed=9, errors=1, ttft_p90=1.0, imbalance=1.0)
    two = replace(BASE, requests=11, completed=11, errors=0, ttft_p90=2.0, imbalance=2.0)
    mean = mean_summary([one, two])
    assert (mean.requests, mean.completed, mean.errors) == (10, 10, 1)
    assert (mean.ttft_p90, mean.imbalance, mean.output_tokens_per_s) == (1.5, 1.5, 100.0)
    assert math.isnan(mean_summary([one, replace(two, imbalance=math.nan)]).imbalance), (
        "unknown stays unknown"
    )


def test_points_group_the_seeds_and_a_single_run_is_its_own_mean() -> None:
    runs = [run("ours", 2, 200, 1.0), run("ours", 2, 300, 3.0, seed=1), run("ours", 3, 400, 5.0)]
    groups = by_point(runs)
    assert list(groups) == [
        ("cache-pressure", "ours", 2, "virtual"),
        ("cache-pressure", "ours", 3, "virtual"),
    ]
    two, one = groups.values()
    assert (two.count, one.count) == (2, 1)
    assert one.mean is runs[2]
    assert two.mean.key == RunKey("cache-pressure", "ours", 2, "virtual")
    assert (two.mean.summary.output_tokens_per_s, two.mean.summary.ttft_p90) == (250, 2.0)
    assert two.span(lambda s: s.ttft_p90) == (1.0, 3.0)
    assert two.mean.served == {"sim-0": 20, "sim-1": 1, "sim-2": 1} and two.mean.wall_seconds == 4.0


def test_the_note_names_the_seeds_per_workload_and_is_empty_for_one_run_each() -> None:
    assert seeds_note(by_point([run("ours", 2, 200, 1.0)]), ["cache-pressure"]) == ""
    runs = [run("ours", 2, 200, 1.0, seed=s, workload_seed=w) for s in (0, 1, 2) for w in (7, 3)] + [
        replace(run("ours", 2, 200, 1.0), key=RunKey("mixed", "ours", 2, "virtual"))
    ]
    note = seeds_note(by_point(runs), ["cache-pressure", "mixed", "absent"])
    assert "- `cache-pressure`: 6 seed pairs, routing seeds 0, 1, 2 x workload seeds 3, 7" in note
    assert "- `mixed`: 1 seed pairs, routing seeds 0 x workload seeds the file's" in note
    assert "absent" not in note


def suite() -> Suite:
    spec = SuiteSpec(
        policies=[PolicySpec(name=n) for n in ("gie-default", "ours")],
        workloads=["workloads/cache-pressure.yaml"],
        headline="ours",
        pressure_workloads=["cache-pressure"],
    )
    return Suite(spec, BENCH)


def test_versus_finds_the_baselines_knee_and_throughput_on_the_seed_mean() -> None:
    """GIE meets the SLO at 3 req/s on seed 0 only (1.8 and 2.6 s: mean 2.2 s), so on the mean its
    highest rate within the SLO is 2; ours meets it at 3 on the mean (1.5 and 2.3 s: 1.9 s) though
    not on seed 1. Per seed GIE's best would be 310 tok/s at 3 on seed 0: the mean does not pick
    the lucky draw."""
    runs = [
        run("gie-default", 2, 200, 1.0, seed=0),
        run("gie-default", 2, 210, 1.4, seed=1),
        run("gie-default", 3, 310, 1.8, seed=0),
        run("gie-default", 3, 290, 2.6, seed=1),
        run("ours", 2, 220, 0.2, seed=0),
        run("ours", 2, 220, 0.4, seed=1),
        run("ours", 3, 330, 1.5, seed=0),
        run("ours", 3, 320, 2.3, seed=1),
    ]
    text = versus_section(suite(), Results(runs))
    assert "- `cache-pressure`: 2 seed pairs, routing seeds 0, 1 x workload seeds 7" in text
    assert (
        "| rate (req/s): gie-default's highest meeting the SLO | runs (seed pairs) there | TTFT p90 there |"
        in text
    )
    gie = (
        "| gie-default | 2 | 2 | 1.2 s (1.0 s to 1.4 s) | 1.00x | 205 (200 to 210) (at 2) | 1.00x | 20% |  |"
    )
    ours = "| ours | 2 | 2 | 300 ms (200 ms to 400 ms) | 0.25x | 325 (320 to 330) (at 3) | 1.59x | 22% |"
    assert f"| cache-pressure {gie}" in text and f"| cache-pressure {ours}" in text
    assert "TTFT met (≤ 0.85x); throughput met (≥ 1.1x)" in text


def test_versus_counts_errors_on_any_seed_against_the_slo() -> None:
    runs = [
        run("gie-default", 2, 200, 1.0, seed=0),
        run("gie-default", 2, 200, 1.0, seed=1),
        run("gie-default", 3, 300, 1.0, seed=0),
        run("gie-default", 3, 300, 1.0, seed=1, errors=1),
        run("ours", 2, 200, 1.0),
    ]
    assert "| cache-pressure | gie-default | 2 | 2 |" in versus_section(suite(), Results(runs))


def test_the_full_report_tabulates_the_means_and_says_over_which_seeds(tmp_path: Path) -> None:
    full = Suite.load(BENCH / "suite.yaml")
    runs = [run("ours", 64, 3900, 1.2, seed=0), run("ours", 64, 3960, 1.4, seed=1)]
    text = render_results(full, runs, tmp_path / "img", tmp_path / "doc.md", "make bench")
    assert "- `cache-pressure`: 2 seed pairs, routing seeds 0, 1 x workload seeds 7" in text
    assert "| ours | 3,930 | 100 ms | 1.3 s |" in text
    assert text.count("| ours | ") == 2, "one row for the rate, one in the throughput at the SLO"
