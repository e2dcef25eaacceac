"""`number_in_range`, the one argparse type behind `epp run`'s, `epp serve`'s observability and
`epp sim`'s bounded numbers: each flag keeps its own wording."""

from __future__ import annotations

import argparse
import math
import re

import pytest

from epp.cli import build_parser
from epp.params.flagtypes import number_in_range


def test_bounds_are_inclusive_and_nan_is_out_of_range() -> None:
    fraction = number_in_range(float, 0.0, 1.0, message="must be between 0 and 1, not {text}")
    assert (fraction("0"), fraction("1"), fraction("0.25")) == (0.0, 1.0, 0.25)
    for text in ("nan", "-0.1", "1.5", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be between 0 and 1, not {text}"):
            fraction(text)
    unbounded = number_in_range(float, message="never")
    assert math.isinf(unbounded("inf"))


def test_a_non_number_gets_its_own_message_or_argparses_naming_the_type() -> None:
    worded = number_in_range(int, 0, message="{value} is negative", not_a_number="not whole: {text!r}")
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape("not whole: '1.5'")):
        worded("1.5")
    with pytest.raises(argparse.ArgumentTypeError, match="-2 is negative"):
        worded("-2")
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--n", type=number_in_range(int, 1, message="m", name="_count"))
    with pytest.raises(argparse.ArgumentError, match="invalid _count value: 'x'"):
        parser.parse_args(["--n", "x"])


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["run", "--sims=0"], "argument --sims: expected at least 1, not 0"),
        (["run", "--workers=x"], "argument --workers: invalid _count value: 'x'"),
        (["run", "--rate-limit=-1"], "the rate limit must be 0 (none) or more, not -1"),
        (["run", "--rate-limit=0.5"], "argument --rate-limit: expected whole requests per second, not '0.5'"),
        (["run", "--retries=11"], "argument --retries: retries must be between 0 and 10, not 11"),
        (["serve", "--decision-records=-1"], "argument --decision-records: must be ≥ 0, not -1"),
        (["serve", "--decision-sample-rate=2"], "--decision-sample-rate: must be between 0 and 1, not 2"),
        (["sim", "--count=0"], "argument --count: expected an integer at least 1, got '0'"),
        (["sim", "--port=x"], "argument --port: expected an integer from 0 to 65535, got 'x'"),
    ],
)
def test_each_command_line_keeps_its_wording(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser(argv[0]).parse_args(argv)
    assert exited.value.code == 2
    assert error in capsys.readouterr().err
