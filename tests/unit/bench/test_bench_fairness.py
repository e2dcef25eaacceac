"""`epp bench fairness`: max-min shares, Jain's index, tenant tagging and the side-by-side tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import yaml

from epp.bench.fairness import NOISY, WELL_BEHAVED, Bench, Stream, add_arguments, jain, max_min_shares
from epp.bench.realtime import RealtimeCluster, RealtimePolicy, stack_config
from epp.cli import main

CONFIGS = Path(__file__).parents[3] / "bench" / "configs"


def test_max_min_shares_give_the_small_demand_all_it_asks_and_split_the_rest() -> None:
    assert max_min_shares(100.0, [20.0, 500.0]) == [20.0, 80.0]
    assert max_min_shares(100.0, [60.0, 500.0]) == [50.0, 50.0]
    assert max_min_shares(90.0, [10.0, 40.0, 100.0]) == [10.0, 40.0, 40.0]


def test_jain_is_one_when_every_tenant_gets_its_fair_share_and_lower_otherwise() -> None:
    assert jain([20.0, 80.0], [20.0, 500.0]) == pytest.approx(1.0)
    # the small tenant starved to half its demand, the large one took the rest
    assert jain([10.0, 90.0], [20.0, 500.0]) == pytest.approx((0.5 + 1.125) ** 2 / (2 * (0.25 + 1.265625)))


def test_burst_sends_the_protected_stream_only_in_its_on_phases(tiny_workload: Path) -> None:
    args = _args(tiny_workload, seconds=100.0)
    args.burst = [10.0, 30.0]
    bench = Bench(args)
    streams = [Stream(WELL_BEHAVED, 1.0, tenant=WELL_BEHAVED), Stream(NOISY, 5.0, tenant=NOISY)]
    requests = bench.requests(streams)
    mine = [r.arrival for r in requests if r.tenant == WELL_BEHAVED]
    assert mine and all(at % 40 < 10 for at in mine)
    assert any(at > 80 for at in mine)  # every cycle, not only the first
    assert len([r for r in requests if r.tenant == NOISY]) == len(
        [r for r in Bench(_args(tiny_workload, seconds=100.0)).requests(streams) if r.tenant == NOISY]
    )  # the flood unchanged
    assert bench.duty() == 0.25


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("burst", [[0.0, 10.0], [NAN, 10.0], [10.0, NAN], [INF, 1.0]])
def test_a_burst_needs_a_positive_on_phase(tiny_workload: Path, burst: list[float]) -> None:
    """Not a number or infinite phases would silently drop the protected stream (NaN) or make
    its fair share NaN (inf / inf): refused like a zero ON phase."""
    args = _args(tiny_workload, seconds=10.0)
    args.burst = burst
    with pytest.raises(SystemExit, match="--burst: ON must be positive"):
        Bench(args)


@pytest.fixture
def tiny_workload(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-shared",
                "seed": 3,
                "data": {
                    "type": "shared_prefix",
                    "num_groups": 4,
                    "num_prompts_per_group": 2,
                    "system_prompt_len": 40,
                    "question_len": 8,
                    "output_len": 4,
                },
                "load": {"rates": [1]},
                "cluster": {"endpoints": 2, "profile": "tiny-test"},
            }
        )
    )
    return path


def test_streams_own_prompt_groups_in_proportion_to_their_rates(tiny_workload: Path) -> None:
    bench = Bench(_args(tiny_workload, seconds=100.0))
    requests = bench.requests(
        [Stream(WELL_BEHAVED, 1.0, tenant=WELL_BEHAVED), Stream(NOISY, 5.0, tenant=NOISY)]
    )
    assert len(requests) == 600
    mine = [r for r in requests if r.tenant == WELL_BEHAVED]
    assert 70 < len(mine) < 130  # a sixth, as a Poisson split
    assert {r.group for r in mine} == {WELL_BEHAVED}
    assert {r.gateway_headers()["x-gateway-inference-fairness-id"] for r in requests} == {WELL_BEHAVED, NOISY}
    prefixes: dict[str, set[str]] = {r.tenant: set() for r in requests}
    for r in requests:
        prefixes[r.tenant].add(r.prompt[0])
    assert not prefixes[WELL_BEHAVED] & prefixes[NOISY]  # each its own shared prefixes


def test_the_command_prints_both_scenarios_side_by_side(
    tiny_workload: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "doc.md"
    argv = ["bench", "fairness", "--workload", str(tiny_workload), "--capacity", "4", "--seconds", "20"]
    argv += [
        "--warmup",
        "5",
        "--output-len",
        "8",
        "--reserved-tenant",
        "1",
        "--reserved-critical",
        "1",
        "--doc",
        str(doc),
    ]
    monkeypatch.setattr(sys, "argv", ["epp", *argv])
    assert main(argv) == 0
    text = doc.read_text()
    assert "<!-- BEGIN GENERATED: fairness -->" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    labels = [row.split(" | ")[0][2:] for row in rows]
    assert labels == [
        "tenant-a alone, no flow control",
        "both, no flow control",
        "both, flow control, global-strict-fairness-policy",
        "both, flow control, round-robin-fairness-policy",
        "both, flow control, least-tokens-served-fairness-policy",
        "both, no flow control, 1 of 2 pods reserved for tenant-a",
        "both, no flow control, pods reserved by demand (demand-sized-reservation) for tenant-a",
        "critical alone, no flow control",
        "critical alone, flow control",
        "both, no flow control (legacy shedding)",
        "both, flow control (bands)",
        "both, no flow control (legacy shedding), vLLM priority scheduling",
        "both, flow control (bands), vLLM priority scheduling",
        "both, flow control, soft-reflective-ceiling-policy",
        "both, flow control, soft-reflective-ceiling-policy, vLLM priority scheduling",
        "both, flow control, 1 of 2 pods reserved for critical",
        "both, flow control, pods reserved by demand (demand-sized-reservation) for critical",
    ]
    assert rows[0].split(" | ")[2] == "+0%"
    assert rows[2].split(" | ")[3].count(" ms") == 2  # p90 in the EPP's queue / after routing
    assert "tenant-a alone" in capsys.readouterr().out


def test_row_runs_the_reference_and_the_rows_named(
    tiny_workload: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["bench", "fairness", "--workload", str(tiny_workload), "--capacity", "4", "--seconds", "20"]
    argv += ["--warmup", "5", "--output-len", "8", "--scenario", "priority", "--row", "soft-reflective"]
    monkeypatch.setattr(sys, "argv", ["epp", *argv])
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    printed = [line.split(" | ")[0] for line in out if " | " in line and not line.startswith("|")]
    assert printed == [
        "critical alone, no flow control",
        "both, flow control, soft-reflective-ceiling-policy",
        "both, flow control, soft-reflective-ceiling-policy, vLLM priority scheduling",
    ]


def _args(workload: Path, seconds: float) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--workload", str(workload), "--seconds", str(seconds), "--warmup", "0"])


def test_real_time_simulators_get_the_rows_scheduling_policy(tmp_path: Path) -> None:
    policy = RealtimePolicy(None)
    fcfs = stack_config(policy, RealtimeCluster(2, "tiny-test"), tmp_path)
    assert not [a for a in fcfs.sim_args if a.startswith("--scheduling-policy")]
    by_priority = stack_config(
        policy, RealtimeCluster(2, "tiny-test", scheduling_policy="priority"), tmp_path
    )
    assert "--scheduling-policy=priority" in by_priority.sim_args
