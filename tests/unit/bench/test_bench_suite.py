"""The clusters a workload runs on: the real-time one must be the virtual one's hardware."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.bench.realtime import stack_config
from epp.bench.report import load_results
from epp.bench.suite import Suite, SuiteRunner, realtime_cluster, virtual_cluster
from epp.bench.workload import load_spec
from epp.cli import main

ROOT = Path(__file__).parents[3]
WORKLOADS = ROOT / "bench" / "workloads"


def test_realtime_cluster_keeps_the_workloads_kv_cache_size() -> None:
    """`cache-pressure` sizes each replica's KV cache; a real-time run (`epp bench run --engine
    realtime`, `epp bench agree --workload ...`) must start its simulators with that size, or there
    is no pressure."""
    spec = load_spec(WORKLOADS / "cache-pressure.yaml")
    cluster = realtime_cluster(spec, time_scale=2.0, scrape_interval=0.05)
    assert (cluster.endpoints, cluster.profile, cluster.num_gpu_blocks) == (4, "llama-3.1-8b-h100", 2048)
    assert cluster.time_scale == 2.0
    assert cluster.scrape_interval == 0.1  # wall seconds: the modelled interval times the scale
    assert virtual_cluster(spec, 0.05, 0).profile.num_gpu_blocks == 2048
    suite = Suite.load(ROOT / "bench" / "suite.yaml")
    config = stack_config(suite.realtime_policy(suite.policy("gie-default")), cluster, Path("/tmp/unused"))
    assert "--num-gpu-blocks=2048" in config.sim_args


def test_realtime_cluster_leaves_the_profiles_cache_when_the_workload_sets_none() -> None:
    spec = load_spec(WORKLOADS / "agreement.yaml")
    assert realtime_cluster(spec, time_scale=1.0, scrape_interval=0.05).num_gpu_blocks is None


def tiny_suite(directory: Path) -> Path:
    """A suite of one small workload (its file's seed 1) and the random policy."""
    (directory / "tiny.yaml").write_text(
        "name: tiny\nseed: 1\ndata:\n  type: shared_prefix\n  num_groups: 4\n  num_prompts_per_group: 6\n"
        "  system_prompt_len: 40\n  question_len: 20\n  output_len: 8\n"
        "load:\n  rates: [50]\ncluster:\n  endpoints: 3\n  profile: tiny-test\n"
    )
    random_config = ROOT / "bench" / "configs" / "random.yaml"
    suite = directory / "suite.yaml"
    suite.write_text(f"workloads: [tiny.yaml]\npolicies:\n- name: random\n  config: {random_config}\n")
    return suite


def test_bench_run_seed_changes_only_the_routing_coin_flips(tmp_path: Path) -> None:
    """`epp bench run --seed`: the routing plugins' random seed. The same seed reproduces a run;
    another seed routes random's requests differently over the same requests (the workload's
    draws keep the workload file's seed)."""
    tiny_suite(tmp_path)

    def served(seed: int) -> dict[str, int]:
        results = tmp_path / f"seed{seed}-{len(list(tmp_path.iterdir()))}.json"
        argv = ["bench", "run", "--suite", str(tmp_path / "suite.yaml"), "--jobs", "1"]
        assert main([*argv, "--seed", str(seed), "--results", str(results)]) == 0
        (outcome,) = load_results(results)
        assert outcome.summary.completed == 24
        return outcome.served

    assert served(3) == served(3)
    assert served(3) != served(4)


def test_bench_run_makes_one_run_per_routing_seed_and_workload_seed(tmp_path: Path) -> None:
    """`--seed` and `--workload-seed` repeat; every pair is its own run in the results file, keyed
    by both; `file` is the workload file's own seed (1 here), recorded as such."""
    suite, results = tiny_suite(tmp_path), tmp_path / "results.json"
    argv = ["bench", "run", "--suite", str(suite), "--jobs", "1", "--results", str(results)]
    seeds = ["--seed", "3", "--seed", "4", "--seed", "3", "--workload-seed", "file", "--workload-seed", "9"]
    assert main([*argv, *seeds, "--workload-seed", "1"]) == 0
    runs = {(o.key.seed, o.key.workload_seed): o for o in load_results(results)}
    assert sorted(runs) == [(3, 1), (3, 9), (4, 1), (4, 9)], "each pair once"
    assert all(o.summary.completed == 24 for o in runs.values())
    assert runs[3, 1].summary != runs[3, 9].summary, "another workload seed draws other requests"
    assert main([*argv, "--seed", "4"]) == 0, "merged: the seed-4 run of the file's seed is replaced"
    assert len(load_results(results)) == 4


def test_bench_run_refuses_a_workload_seed_that_is_not_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "run", "--workload-seed", "seven"])
    assert exit_.value.code == 2
    assert "--workload-seed: 'seven' is neither an integer nor 'file'" in capsys.readouterr().err


def test_routing_seeds_apply_to_virtual_time_only() -> None:
    runner = SuiteRunner(Suite.load(ROOT / "bench" / "suite.yaml"), engine="realtime", seeds=[0, 1])
    with pytest.raises(ValueError, match=r"routing seeds other than 0 \(--seed\) apply to virtual time only"):
        runner.run()


def test_bench_run_refuses_routing_seeds_in_real_time_with_an_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["bench", "run", "--engine", "realtime", "--seed", "1", "--workload", "shared-prefix"]
    assert main([*argv, "--results", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "epp bench run: error: routing seeds other than 0 (--seed) apply to virtual time only" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{bad", "is not JSON: "),
        ('{"runs": []}', "is not a results file: a JSON list of runs expected, got an object"),
        ('[{"workload": "tiny"}]', "run 1: 'policy' missing"),
        ("[1]", "run 1: an object expected, got 1"),
    ],
    ids=["not-json", "an-object", "a-field-missing", "not-a-run"],
)
def test_bench_run_refuses_a_results_file_it_cannot_merge_into_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    """Before, every run ran and the merge then failed on the file with a traceback: the runs
    were lost. Now the file is read first, and left as it was."""
    results = tmp_path / "results.json"
    results.write_text(content)
    argv = ["bench", "run", "--suite", str(tiny_suite(tmp_path)), "--jobs", "1", "--results", str(results)]
    assert main(argv) == 2
    err = capsys.readouterr()
    assert f"epp bench run: error: --results {results} {problem}" in err.err
    assert "random" not in err.out, "nothing ran"
    assert results.read_text() == content


def test_bench_run_merges_into_an_empty_results_file(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text("")
    argv = ["bench", "run", "--suite", str(tiny_suite(tmp_path)), "--jobs", "1", "--results", str(results)]
    assert main(argv) == 0
    assert len(load_results(results)) == 1


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--workload", "tiyn"], "--workload tiyn: the suite has no such workload (it has tiny)"),
        (
            ["--policy", "random", "--policy", "gie"],
            "--policy gie: the suite has no such policy (it has random)",
        ),
        (["--rate", "12"], "nothing to run: no selected workload lists --rate 12 (tiny: 50)"),
    ],
    ids=["workload", "policy", "rate"],
)
def test_bench_run_refuses_a_selection_naming_nothing_in_the_suite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], problem: str
) -> None:
    """Before: a typo ran nothing, or the rest alone, and said '0 runs merged', exit 0."""
    results = tmp_path / "results.json"
    argv = ["bench", "run", "--suite", str(tiny_suite(tmp_path)), "--jobs", "1", "--results", str(results)]
    assert main([*argv, *flags]) == 2
    assert f"epp bench run: error: {problem}" in capsys.readouterr().err
    assert not results.exists()


def test_bench_run_refuses_a_scrape_interval_of_0(capsys: pytest.CaptureFixture[str]) -> None:
    """Before, virtual time never advanced past the first scrape: the run hung."""
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "run", "--scrape-interval", "0"])
    assert exit_.value.code == 2
    assert "--scrape-interval: must be at least 0.001 (modelled seconds), not 0" in capsys.readouterr().err
