"""`epp bench scale`: a bad argument is a usage error naming it, before any run (each was a
traceback: the profile's KeyError, pydantic's ValidationError, generate's ValueError); each
policy's run is timed on its own, the previous policy's run freed first."""

from __future__ import annotations

import argparse
import weakref
from pathlib import Path
from typing import Any

import pytest

from epp.bench import scale
from epp.bench.cli import add_arguments
from epp.bench.virtual import VirtualRun

SUITE = Path(__file__).parents[3] / "bench" / "suite.yaml"


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="epp bench")
    add_arguments(parser)
    return parser.parse_args(["scale", "--suite", str(SUITE), *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", "h200"], "argument --profile: invalid choice: 'h200'"),
        (["--endpoints", "0"], "argument --endpoints: expected a positive int, not '0'"),
        (["--per-group", "-1"], "argument --per-group: expected a positive int, not '-1'"),
        (["--output-len", "0"], "argument --output-len: expected a positive int, not '0'"),
        (["--rate", "0"], "argument --rate: expected a positive float, not '0'"),
    ],
)
def test_a_bad_argument_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parsed(*argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unknown_policy_is_named_before_any_run() -> None:
    args = parsed(
        "--endpoints", "2", "--groups", "2", "--per-group", "2", "--policy", "random", "--policy", "nope"
    )
    with pytest.raises(
        SystemExit, match=r"^epp bench scale: no policy 'nope' in .*suite.yaml; known: .*\brandom\b"
    ):
        scale.main(args)


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
