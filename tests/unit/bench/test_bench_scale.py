"""`epp bench scale`'s arguments: a bad one is a usage error naming it, before any run (each was
a traceback: the profile's KeyError, pydantic's ValidationError, generate's ValueError)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from epp.bench import scale
from epp.bench.cli import add_arguments

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
