"""`epp bench scale` times each policy's run on its own: the previous policy's run is freed first."""

from __future__ import annotations

import argparse
import weakref
from pathlib import Path
from typing import Any

import pytest

from epp.bench import scale
from epp.bench.virtual import VirtualRun

SUITE = Path(__file__).parents[3] / "bench" / "suite.yaml"


def test_each_policy_runs_after_the_previous_run_is_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run holds cycles (its plugins' clock reads it), so without a full collection between
    policies the next one would run beside the previous one's heap."""
    earlier: list[weakref.ref[VirtualRun]] = []
    alive_at_start: list[int] = []

    class Tracked(VirtualRun):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            alive_at_start.append(sum(ref() is not None for ref in earlier))
            super().__init__(*args, **kwargs)
            earlier.append(weakref.ref(self))

    monkeypatch.setattr(scale, "VirtualRun", Tracked)
    parser = argparse.ArgumentParser()
    scale.add_arguments(parser)
    sizes = ["--endpoints", "3", "--groups", "2", "--per-group", "2", "--rate", "50"]
    policies = ["--policy", "random", "--policy", "ours", "--policy", "gie-default"]
    args = parser.parse_args(["--suite", str(SUITE), *sizes, *policies])
    args.command_line = "epp bench scale"
    assert scale.main(args) == 0
    assert alive_at_start == [0, 0, 0]
