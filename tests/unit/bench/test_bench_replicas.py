"""N active-active replicas in virtual time: each gets a share; sync makes them route as one."""

from __future__ import annotations

from pathlib import Path

from epp.bench.replicas import ReplicaSettings, ReplicatedVirtualRun, run_replicated
from epp.bench.virtual import VirtualCluster
from epp.bench.workload import BenchRequest, WorkloadSpec, generate
from epp.config.loader import load_config_file
from epp.sim.profiles import TINY_TEST

CONFIG = load_config_file(Path(__file__).parents[3] / "bench" / "configs" / "ours-approximate.yaml")
CLUSTER = VirtualCluster(endpoints=4, profile=TINY_TEST)


def requests() -> list[BenchRequest]:
    spec = WorkloadSpec.model_validate(
        {
            "name": "tiny-shared",
            "seed": 3,
            "data": {
                "type": "shared_prefix",
                "num_groups": 8,
                "num_prompts_per_group": 6,
                "system_prompt_len": 200,
                "question_len": 8,
                "output_len": 4,
            },
            "load": {"rates": [20.0]},
        }
    )
    return generate(spec, 20.0)


def test_every_replica_gets_a_share_and_every_request_completes() -> None:
    run = ReplicatedVirtualRun(requests(), CONFIG, CLUSTER, ReplicaSettings(4, "full"))
    result = run.run()
    assert all(r.ok for r in result.records)
    assert len(run.directors) == 4 and len({id(d.datastore) for d in run.directors}) == 4
    assert all(e.inflight_requests == 0 for store in run.datastores for e in store.endpoints())


def test_synced_replicas_hit_the_cache_as_one_does_and_naive_ones_miss() -> None:
    reqs = requests()
    one = run_replicated(reqs, CONFIG, CLUSTER, ReplicaSettings(1, "none"))
    naive = run_replicated(reqs, CONFIG, CLUSTER, ReplicaSettings(4, "none"))
    synced = run_replicated(reqs, CONFIG, CLUSTER, ReplicaSettings(4, "full"))
    assert synced.hit_rate >= one.hit_rate - 0.02
    assert naive.hit_rate < synced.hit_rate - 0.05


def test_precise_replicas_need_no_sync_their_index_comes_from_the_engines() -> None:
    """ours.yaml: every replica's index is filled by the same engines' KV events, so replicas that
    share nothing still find the prefixes (the approximate index above needs the sync)."""
    precise = load_config_file(Path(__file__).parents[3] / "bench" / "configs" / "ours.yaml")
    reqs = requests()
    one = run_replicated(reqs, precise, CLUSTER, ReplicaSettings(1, "none"))
    naive = run_replicated(reqs, precise, CLUSTER, ReplicaSettings(4, "none"))
    approximate_naive = run_replicated(reqs, CONFIG, CLUSTER, ReplicaSettings(4, "none"))
    assert naive.hit_rate >= one.hit_rate - 0.02
    assert naive.hit_rate > approximate_naive.hit_rate + 0.05
