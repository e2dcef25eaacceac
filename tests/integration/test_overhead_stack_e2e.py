"""`epp bench overhead` end to end: plain Envoy, the minimal ext_proc server and the EPP behind one
Envoy, every path serving, one table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from epp.bench import minimal_extproc, overhead
from epp.bench.loadgen import run_realtime
from epp.stack.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]
TINY_RUN = (
    *("--endpoints=2", "--prompt-tokens=64", "--shared-tokens=32", "--rate=20", "--seconds=1"),
    *("--warmup-seconds=0.5", "--idle-seconds=0.5"),
)


def arguments(tmp_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    overhead.add_arguments(parser)
    args = parser.parse_args([f"--run-dir={tmp_path / 'run'}", f"--doc={tmp_path / 'doc.md'}", *argv])
    args.command_line = "epp bench overhead " + " ".join(argv)
    return args


async def test_the_minimal_server_routes_round_robin_through_the_gateways_envoy(tmp_path: Path) -> None:
    args = arguments(
        tmp_path, "--endpoints=3", "--endpoints-per-process=2", "--prompt-tokens=40", "--shared-tokens=20"
    )
    config = overhead.stack_config(args)
    assert config.reference_ext_proc == minimal_extproc.__name__
    async with Stack(config) as stack:
        assert [s.name for s in stack.sims] == ["sims-0-0", "sims-0-1", "sims-1-0"]
        requests = overhead.Prompts(40, 20, seed=1).requests(rate=30.0, seconds=0.3)
        result = await run_realtime(
            requests, stack.reference_url, overhead.MODEL, [s.name for s in stack.sims]
        )
    assert all(r.ok for r in result.records), [r.error for r in result.records]
    assert sorted(r.endpoint for r in result.records) == sorted(["sims-0-0", "sims-0-1", "sims-1-0"] * 3)
    assert all(r.prompt_tokens == 40 for r in result.records)


async def test_one_table_with_the_three_paths_and_the_ratio(tmp_path: Path) -> None:
    args = arguments(tmp_path, *TINY_RUN)
    assert await overhead.main(args) == 0
    text = (tmp_path / "doc.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| 20 |")]
    assert [row[1] for row in rows] == ["plain Envoy", "minimal ext_proc", "EPP"]
    assert all(row[-1] == "0 |" for row in rows), rows
    assert rows[1][7] == "1.00x" and rows[2][7].endswith("x")
    assert "- command: `epp bench overhead --endpoints=2" in text


async def test_a_versus_config_adds_a_second_epp_and_the_rounds_differences(tmp_path: Path) -> None:
    """Flow control on (the versus EPP) against off (the EPP) in one run: four paths, every request
    served, and a second table pairing the two EPPs round by round, with the share of the versus
    EPP's requests its queue held (read from its /metrics)."""
    config = Path(__file__).parents[2] / "bench" / "configs" / "gie-default-flow-control.yaml"
    args = arguments(tmp_path, *TINY_RUN, "--seconds=0.5", "--rounds=2", f"--versus-config={config}")
    assert await overhead.main(args) == 0
    text = (tmp_path / "doc.md").read_text()
    assert "<!-- BEGIN GENERATED: overhead-versus -->" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| 20 |")]
    paths = ["plain Envoy", "minimal ext_proc", "EPP", "EPP (gie-default-flow-control.yaml)"]
    assert [row[1] for row in rows[:4]] == paths
    assert all(row[-1] == "0 |" for row in rows[:4]), rows
    assert [row[1] for row in rows[4:]] == ["1", "2", "median"]
    assert all(row[-2].endswith("x)") and row[-1].endswith("% |") for row in rows[4:]), rows
    assert overhead.stack_config(args).versus_epp_args == [
        "--refresh-metrics-interval=50ms",
        f"--config-file={config.resolve()}",
    ]
