"""The clusters a workload runs on: the real-time one must be the virtual one's hardware."""

from __future__ import annotations

from pathlib import Path

from epp.bench.realtime import stack_config
from epp.bench.report import load_results
from epp.bench.suite import Suite, realtime_cluster, virtual_cluster
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


def test_bench_run_seed_changes_only_the_routing_coin_flips(tmp_path: Path) -> None:
    """`epp bench run --seed`: the routing plugins' random seed. The same seed reproduces a run;
    another seed routes random's requests differently over the same requests (the workload's
    draws keep the workload file's seed)."""
    (tmp_path / "tiny.yaml").write_text(
        "name: tiny\nseed: 1\ndata:\n  type: shared_prefix\n  num_groups: 4\n  num_prompts_per_group: 6\n"
        "  system_prompt_len: 40\n  question_len: 20\n  output_len: 8\n"
        "load:\n  rates: [50]\ncluster:\n  endpoints: 3\n  profile: tiny-test\n"
    )
    random_config = ROOT / "bench" / "configs" / "random.yaml"
    (tmp_path / "suite.yaml").write_text(
        f"workloads: [tiny.yaml]\npolicies:\n- name: random\n  config: {random_config}\n"
    )

    def served(seed: int) -> dict[str, int]:
        results = tmp_path / f"seed{seed}-{len(list(tmp_path.iterdir()))}.json"
        argv = ["bench", "run", "--suite", str(tmp_path / "suite.yaml"), "--jobs", "1"]
        assert main([*argv, "--seed", str(seed), "--results", str(results)]) == 0
        (outcome,) = load_results(results)
        assert outcome.summary.completed == 24
        return outcome.served

    assert served(3) == served(3)
    assert served(3) != served(4)
