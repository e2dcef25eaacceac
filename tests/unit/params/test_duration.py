from __future__ import annotations

import pytest

from epp.params.duration import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("250us", 0.00025),
        ("0", 0.0),
        ("3", 3.0),
        (2, 2.0),
    ],
)
def test_go_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 seconds", "ms", "1x", "s1"])
def test_invalid_durations_say_how_to_write_them(text: str) -> None:
    with pytest.raises(ValueError, match="use Go syntax"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "infinity", "1e999", float("nan"), float("inf")])
def test_endless_or_undefined_durations_are_refused(text: str | float) -> None:
    # Go's ParseDuration refuses these; accepted, --drain-timeout=inf never exited on SIGTERM and
    # --max-queue-wait=nan turned the check off without a word.
    with pytest.raises(ValueError, match="not a finite duration"):
        parse_duration(text)
