"""The real-time benchmark engine end to end: the load generator through real Envoy + EPP +
simulator processes (and through Envoy's round-robin listener without the EPP), next to the
virtual-time engine on the same tiny workload."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.bench.realtime import RealtimeCluster, RealtimePolicy, run_stack
from epp.bench.suite import Suite
from epp.bench.summary import summarize
from epp.bench.virtual import VirtualCluster, run_virtual
from epp.bench.workload import WorkloadSpec, generate
from epp.config.loader import load_config
from epp.sim.profiles import TINY_TEST
from epp.stack.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

SPEC = WorkloadSpec.model_validate(
    {
        "name": "tiny",
        "seed": 3,
        "data": {
            "type": "shared_prefix",
            "num_groups": 4,
            "num_prompts_per_group": 4,
            "system_prompt_len": 64,
            "question_len": 8,
            "output_len": 4,
        },
        "load": {"rates": [40]},
    }
)
CLUSTER = RealtimeCluster(endpoints=3, profile=TINY_TEST.name, time_scale=1.0)
SUITE = Suite.load(Path(__file__).parents[2] / "bench" / "suite.yaml")


async def test_tiny_workload_through_both_engines(tmp_path: Path) -> None:
    requests = generate(SPEC, 40.0)
    real = await run_stack(
        requests, SUITE.realtime_policy(SUITE.policy("gie-default")), CLUSTER, tmp_path / "stack"
    )
    virtual = run_virtual(requests, load_config(), VirtualCluster(3, TINY_TEST))
    for result in (real, virtual):
        assert all(r.ok for r in result.records), [r.error for r in result.records]
        assert set(result.endpoints) == {"sim-0", "sim-1", "sim-2"}
        assert {r.endpoint for r in result.records} <= set(result.endpoints)
        assert all(r.output_tokens == 4 and r.first_token is not None for r in result.records)
        assert len(result.itl) == 3 * len(requests)
    # both engines feed the simulator the same tokens, and prefix routing finds the shared prompts
    assert [r.prompt_tokens for r in real.records] == [r.prompt_tokens for r in virtual.records]
    assert summarize(real).hit_rate > 0.3 and summarize(virtual).hit_rate > 0.3


async def test_envoy_round_robin_baseline_spreads_evenly_without_the_epp(tmp_path: Path) -> None:
    requests = generate(SPEC, 40.0)
    result = await run_stack(
        requests, SUITE.realtime_policy(SUITE.policy("round-robin")), CLUSTER, tmp_path / "stack"
    )
    assert all(r.ok for r in result.records)
    served = [sum(1 for r in result.records if r.endpoint == name) for name in result.endpoints]
    assert max(served) - min(served) <= 1, served


@pytest.mark.parametrize(("name", "publish"), [("llm-d-precise", True), ("ours", True), ("ours", False)])
async def test_precise_policies_in_real_time_read_render_and_kv_events(
    tmp_path: Path, name: str, publish: bool
) -> None:
    """The precise configs through the real stack: token-producer on a simulator's render API, the
    simulators' KV events over ZMQ into the EPP's central socket. `ours` also routes by prefix when
    the simulators publish nothing: with speculative indexing off, only its approximate fallback
    can find the shared prompts (without it every request is cold: 33 % hits, round-robin)."""
    requests = generate(SPEC, 40.0)
    suite_policy = SUITE.realtime_policy(SUITE.policy(name))
    assert suite_policy.config is not None and suite_policy.kv_events_endpoint == "tcp://127.0.0.1:5557"
    port = free_port()  # not the suite's 5557: other stacks may run on this machine
    config = tmp_path / "precise.yaml"
    text = suite_policy.config.read_text().replace("127.0.0.1:5557", f"127.0.0.1:{port}")
    config.write_text(
        text if publish else text.replace("speculativeIndexing: true", "speculativeIndexing: false")
    )
    policy = RealtimePolicy(config, kv_events_endpoint=f"tcp://127.0.0.1:{port}" if publish else "")
    result = await run_stack(requests, policy, CLUSTER, tmp_path / "stack")
    assert all(r.ok for r in result.records), [r.error for r in result.records]
    assert summarize(result).hit_rate > (0.3 if publish else 0.5)
    log = (tmp_path / "stack" / "epp.log").read_text()
    assert "tokenization failed" not in log and f"reading KV events on tcp://127.0.0.1:{port}" in log
