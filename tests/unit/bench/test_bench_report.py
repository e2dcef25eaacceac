"""Results files, the generated blocks of docs/benchmarks.md, and the goal arithmetic."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

from epp.bench.cli import add_arguments, report
from epp.bench.report import (
    Results,
    ResultsError,
    goals_section,
    load_results,
    render_results,
    save_results,
    versus_section,
    write_block,
)
from epp.bench.suite import PolicySpec, RunKey, RunOutcome, Suite, SuiteSpec
from epp.bench.summary import Summary
from epp.cli import main

BASE = Summary(
    requests=10,
    completed=10,
    errors=0,
    duration_s=10.0,
    output_tokens_per_s=100.0,
    requests_per_s=1.0,
    ttft_p50=0.1,
    ttft_p90=0.2,
    ttft_p99=0.3,
    itl_p50=0.01,
    itl_p99=0.02,
    e2e_p50=1.0,
    e2e_p99=2.0,
    hit_rate=0.5,
    imbalance=1.1,
)


def run(policy: str, rate: float, tps: float, ttft_p90: float, errors: int = 0) -> RunOutcome:
    summary = replace(BASE, output_tokens_per_s=tps, ttft_p90=ttft_p90, errors=errors)
    return RunOutcome(RunKey("shared-prefix", policy, rate, "virtual"), summary, 1.0, {"sim-0": 10})


def test_results_merge_by_run_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    save_results(path, [run("a", 1, 100, 0.1), run("a", 2, 150, 0.5)])
    save_results(path, [run("a", 2, 180, 0.4), run("b", 1, 90, 9.0)])
    loaded = {(o.key.policy, o.key.rate): o for o in load_results(path)}
    assert set(loaded) == {("a", 1.0), ("a", 2.0), ("b", 1.0)}
    assert loaded["a", 2.0].summary.output_tokens_per_s == 180, "a rerun replaces the earlier run"
    assert loaded["a", 1.0].served == {"sim-0": 10}


def test_throughput_at_slo_is_the_best_run_meeting_it() -> None:
    results = Results(
        [run("a", 1, 100, 0.1), run("a", 2, 300, 1.9), run("a", 3, 400, 2.5), run("a", 4, 500, 1.0, 2)]
    )
    best = results.throughput_at_slo("shared-prefix", "a", 2.0)
    assert best is not None and best.key.rate == 2, "too slow at 3, errors at 4"
    assert results.throughput_at_slo("shared-prefix", "b", 2.0) is None


def test_goals_compare_throughput_at_the_slo_and_ttft_at_every_rate() -> None:
    suite = Suite(
        SuiteSpec(
            policies=[PolicySpec(name=n) for n in ("ours", "random")], workloads=["w"], headline="ours"
        ),
        Path("."),
    )
    results = Results(
        [
            run("ours", 1, 100, 0.1),
            run("ours", 2, 330, 0.2),
            run("random", 1, 100, 1.0),
            run("random", 2, 150, 40.0),
        ]
    )
    text = goals_section(suite, results, "shared-prefix")
    assert "| random | 3.30x | 1: 0.100, 2: 0.005 |" in text
    assert "throughput met (goal ≥ 3x); TTFT met at every rate (goal ≤ 0.2)" in text
    assert "round-robin" not in text, "rivals without runs are left out"


def test_generated_blocks_replace_only_themselves(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nprose before\n")
    write_block(doc, "results", "first")
    write_block(doc, "other", "x")
    write_block(doc, "results", "second $1 \\1")
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose before\n")
    assert "second $1 \\1" in text and "first" not in text and text.count("BEGIN GENERATED: results") == 1
    assert "<!-- BEGIN GENERATED: other -->\nx\n<!-- END GENERATED: other -->" in text


def test_rendered_results_have_tables_and_a_plot(tmp_path: Path) -> None:
    suite = Suite.load(Path(__file__).parents[3] / "bench" / "suite.yaml")
    outcomes = [run("ours", 10, 8000, 0.5), run("random", 10, 5000, 60.0)]
    text = render_results(suite, outcomes, tmp_path / "img", tmp_path / "doc.md", "make bench")
    assert "### shared-prefix" in text and "| ours | 8,000 | 100 ms | 500 ms |" in text
    assert (tmp_path / "img" / "bench-shared-prefix.png").stat().st_size > 10_000
    assert "![shared-prefix" in text and "(img/bench-shared-prefix.png)" in text


def test_versus_compares_at_the_baselines_highest_rate_meeting_the_slo() -> None:
    def at(workload: str, policy: str, rate: float, tps: float, ttft_p90: float) -> RunOutcome:
        outcome = run(policy, rate, tps, ttft_p90)
        return replace(outcome, key=replace(outcome.key, workload=workload))

    suite = Suite(
        SuiteSpec(
            policies=[PolicySpec(name=n) for n in ("gie-default", "ours")],
            workloads=["workloads/cache-pressure.yaml", "workloads/mixed.yaml"],
            headline="ours",
            pressure_workloads=["cache-pressure"],
        ),
        Path(__file__).parents[3] / "bench",
    )
    results = Results(
        [
            at("cache-pressure", "gie-default", 1, 100, 0.5),
            at("cache-pressure", "gie-default", 2, 200, 1.5),
            at("cache-pressure", "gie-default", 3, 210, 9.0),
            at("cache-pressure", "ours", 2, 200, 0.3),
            at("cache-pressure", "ours", 3, 230, 1.9),
            at("mixed", "gie-default", 5, 500, 0.100),
            at("mixed", "ours", 5, 490, 0.104),
        ]
    )
    text = versus_section(suite, results)
    assert "| cache-pressure | ours | 2 | 300 ms | 0.20x | 230 (at 3) | 1.15x | 50% | TTFT met" in text
    assert "throughput met (≥ 1.1x)" in text
    assert "| mixed | ours | 5 | 104 ms | 1.04x | 490 (at 5) | 0.98x | 50% | within 3%: SHORT |" in text
    assert "| mixed | gie-default | 5 | 100 ms | 1.00x | 500 (at 5) | 1.00x | 50% |  |" in text


def test_report_versus_writes_the_named_block_against_the_named_baseline(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    save_results(
        results,
        [
            replace(run(policy, 2, tps, ttft), key=RunKey("cache-pressure", policy, 2, "virtual"))
            for policy, tps, ttft in (("gie-upstream", 200, 1.0), ("ours", 230, 0.5))
        ],
    )
    doc = tmp_path / "doc.md"
    doc.write_text("# doc\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    suite = Path(__file__).parents[3] / "bench" / "suite.yaml"
    files = ["--suite", str(suite), "--results", str(results), "--doc", str(doc)]
    args = parser.parse_args(["report", "--versus", *files, "--baseline", "gie-upstream", "--block", "churn"])
    assert report(args) == 0
    text = doc.read_text()
    assert "<!-- BEGIN GENERATED: churn -->" in text
    assert "| cache-pressure | ours | 2 | 500 ms | 0.50x | 230 (at 2) | 1.15x |" in text
    assert "rate (req/s): gie-upstream's highest meeting the SLO" in text


DATA = Path(__file__).parents[2] / "data" / "bench"


def test_versus_over_one_seed_is_the_single_run_report_to_the_character() -> None:
    """A results file written before seeds were (no `seed` / `workload_seed`), one run per point:
    the versus block is what it was before seeds were averaged (the .md, written by that code)."""
    suite = Suite.load(Path(__file__).parents[3] / "bench" / "suite.yaml")
    outcomes = load_results(DATA / "versus-one-seed.json", suite.workload_seeds())
    assert versus_section(suite, Results(outcomes)) + "\n" == (DATA / "versus-one-seed.md").read_text()


def test_an_older_results_file_loads_as_routing_seed_0_and_the_workloads_file_seed(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text((DATA / "versus-one-seed.json").read_text())
    seeds = {"cache-pressure": 7, "mixed": 4}
    loaded = load_results(path, seeds)
    assert {(o.key.workload, o.key.seed, o.key.workload_seed) for o in loaded} == {
        ("cache-pressure", 0, 7),
        ("mixed", 0, 4),
        ("long-system-prompt", 0, None),  # not in the mapping: its seed is not known
    }
    rerun = replace(run("ours", 60, 999, 0.1), key=RunKey("cache-pressure", "ours", 60, "virtual", 0, 7))
    other = replace(rerun, key=replace(rerun.key, seed=1))
    save_results(path, [rerun, other], seeds)
    merged = [o for o in load_results(path) if o.key.workload == "cache-pressure" and o.key.rate == 60]
    assert len(merged) == 3, "gie-default's, the rerun in place of ours's seed-0 run, and seed 1's"
    assert [o.summary.output_tokens_per_s for o in merged if o.key.policy == "ours"] == [999, 999]
    assert '"workload_seed": 7' in path.read_text()


@pytest.mark.parametrize(
    ("content", "versus", "problem"),
    [
        (None, False, "--results {results}: no such file"),
        ("", False, "--results {results} holds no runs"),
        ("[]", True, "--results {results} holds no runs"),
        ("{bad", True, "--results {results} is not JSON: "),
        (
            '[{"workload": "w", "policy": "p", "rate": 1, "engine": "virtual", "seed": "abc", '
            '"wall_seconds": 1, "summary": {}}]',
            True,
            "--results {results} run 1: 'seed' is not an integer: 'abc'",
        ),
        (None, True, "--results {results}: no such file"),
    ],
    ids=["missing", "empty", "empty-list", "not-json", "bad-seed", "missing-versus"],
)
def test_report_refuses_results_it_cannot_read_and_leaves_the_doc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, versus: bool, problem: str
) -> None:
    results, doc = tmp_path / "results.json", tmp_path / "doc.md"
    if content is not None:
        results.write_text(content)
    doc.write_text("# doc\n")
    suite = Path(__file__).parents[3] / "bench" / "suite.yaml"
    argv = ["bench", "report", "--suite", str(suite), "--results", str(results), "--doc", str(doc)]
    assert main([*argv, *(["--versus"] if versus else [])]) == 2
    assert f"epp bench report: error: {problem.format(results=results)}" in capsys.readouterr().err
    assert doc.read_text() == "# doc\n", "the doc is left as it was"


def test_report_versus_refuses_results_without_the_baselines_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the versus block was overwritten with a table of no rows, and the exit was 0."""
    results, doc = tmp_path / "results.json", tmp_path / "doc.md"
    save_results(results, [run("ours", 2, 230, 0.5)])
    doc.write_text("# doc\n")
    suite = Path(__file__).parents[3] / "bench" / "suite.yaml"
    argv = ["bench", "report", "--versus", "--suite", str(suite), "--results", str(results)]
    assert main([*argv, "--doc", str(doc)]) == 2
    assert (
        f"epp bench report: error: --results {results} holds no runs of the baseline 'gie-default' "
        "(--baseline)" in capsys.readouterr().err
    )
    assert doc.read_text() == "# doc\n"


def test_a_results_file_with_a_run_twice_is_refused(tmp_path: Path) -> None:
    """Two runs of one key (files joined by hand, or an older run without seeds beside its rerun):
    before, both counted in the mean, as two seed pairs where there was one."""
    path = tmp_path / "results.json"
    save_results(path, [run("a", 1, 100, 0.1), run("b", 1, 100, 0.1)])
    runs = json.loads(path.read_text())
    older = {k: v for k, v in runs[0].items() if k not in ("seed", "workload_seed")}
    path.write_text(json.dumps([*runs, older]))
    with pytest.raises(ResultsError) as error:
        load_results(path, {"shared-prefix": 0})
    assert str(error.value) == (
        f"--results {path} run 3 repeats run 1 (shared-prefix, a, rate 1, virtual, seed 0, workload seed "
        "0): keep one of them"
    )
