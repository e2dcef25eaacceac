"""The virtual-time engine's results, pinned: a digest of every request record, the inter-token
gaps and every engine's counters and histograms, for tiny runs that reach prefix hits, preemption,
queue-full rejections and KV events. Making the engine or the event loop faster must leave these
digests as they are; a deliberate change of the model updates them, and says so in its commit."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from epp.bench import virtual
from epp.bench.digest import run_digest as digest_of
from epp.bench.events import PythonDecodeRun, PythonEventHeap
from epp.bench.virtual import VirtualCluster, VirtualRun
from epp.bench.workload import WorkloadSpec, generate
from epp.config.loader import load_config, load_config_file
from epp.config.model import PickerConfig
from epp.sim.profiles import TINY_TEST

CONFIGS = Path(__file__).parents[3] / "bench" / "configs"
# small enough that requests queue, get preempted and get refused
PRESSURE = dataclasses.replace(TINY_TEST, num_gpu_blocks=48, max_num_seqs=16, max_waiting=10)


def run_digest(config: PickerConfig, endpoints: int, groups: int, per_group: int) -> str:
    spec = WorkloadSpec.model_validate(
        {
            "name": "golden",
            "seed": 4,
            "data": {
                "type": "shared_prefix",
                "num_groups": groups,
                "num_prompts_per_group": per_group,
                "system_prompt_len": 60,
                "question_len": 40,
                "output_len": 120,
            },
            "load": {"rates": [400.0]},
        }
    )
    run = VirtualRun(generate(spec, 400.0), config, VirtualCluster(endpoints, PRESSURE))
    result = run.run()
    return digest_of(result, {name: server.engine.stats for name, server in run.servers.items()})


@pytest.mark.parametrize(
    ("config", "endpoints", "digest"),
    [
        ("random.yaml", 2, "11bbf21378545862"),
        ("kthena.yaml", 2, "7fa8a52083c46c0a"),  # follows the engines' KV events
        (None, 3, "f9ed9fe70f76971f"),  # GIE's default profile
    ],
)
def test_virtual_runs_reproduce_their_pinned_results(config: str | None, endpoints: int, digest: str) -> None:
    picker = load_config_file(CONFIGS / config) if config else load_config()
    assert run_digest(picker, endpoints, groups=8, per_group=12) == digest


@pytest.mark.parametrize(
    ("config", "endpoints", "digest"),
    [("random.yaml", 2, "11bbf21378545862"), ("kthena.yaml", 2, "7fa8a52083c46c0a")],
)
def test_the_python_event_queue_takes_the_same_cohort_steps(
    config: str, endpoints: int, digest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event queue's reference in Python (the fallback without a C compiler) steps decode
    cohorts as the compiled one does: the pinned results, with many steps taken by the queue."""
    runs: list[PythonDecodeRun] = []

    def python_run(*args: Any) -> PythonDecodeRun:
        runs.append(PythonDecodeRun(*args))
        return runs[-1]

    monkeypatch.setattr(virtual, "new_event_queue", PythonEventHeap)
    monkeypatch.setattr(virtual, "new_decode_run", python_run)
    assert run_digest(load_config_file(CONFIGS / config), endpoints, groups=8, per_group=12) == digest
    assert sum(run.taken for run in runs) > 100
