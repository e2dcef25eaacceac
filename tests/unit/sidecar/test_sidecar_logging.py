"""llm-d's sidecar logging flags (controller-runtime's zap flags on a JSON-only logger), with its
defaults: production mode, info, stack traces from errors up, `ts` in epoch seconds."""

from __future__ import annotations

import json
import logging
import time

import pytest

from epp.cli import parse_args
from epp.sidecar.cli import configure_logging


def lines(handler: logging.Handler, *levels: int) -> list[dict[str, object]]:
    """What the root handler writes for one record at each level, logged from here (whatever
    the root's level)."""
    written: list[dict[str, object]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            written.append(json.loads(handler.format(record)))

    keep = Keep()
    keep.filters = handler.filters
    logger = logging.getLogger("epp.sidecar.test")
    logger.addHandler(keep)
    logger.setLevel(logging.DEBUG)
    try:
        for level in levels:
            logger.log(level, "at %s", logging.getLevelName(level))
    finally:
        logger.removeHandler(keep)
        logger.setLevel(logging.NOTSET)
    return written


def configure(*argv: str) -> None:
    configure_logging(parse_args(["sidecar", *argv]))


def test_json_lines_whatever_the_encoder_and_time_encoding_say(root_handler: logging.Handler) -> None:
    """llm-d's NewLogger sets the JSON encoder after the flag options, so --zap-encoder and
    --zap-time-encoding never reach it."""
    configure("--zap-encoder=console", "--zap-time-encoding=rfc3339")
    (line,) = lines(root_handler, logging.INFO)
    assert isinstance(line["ts"], float) and abs(line["ts"] - time.time()) < 60
    assert (line["level"], line["logger"], line["msg"]) == ("info", "epp.sidecar.test", "at INFO")


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        ([], logging.WARNING),  # unset: --log-level's (here the test's) stays
        (["--zap-log-level=debug"], logging.INFO),
        (["--zap-devel=true"], logging.WARNING),
        (["--zap-log-level=4"], logging.DEBUG),
        (["--zap-log-level=ERROR"], logging.ERROR),
    ],
)
def test_levels(argv: list[str], level: int, root_handler: logging.Handler) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    configure(*argv)
    assert logging.getLogger().level == level


@pytest.mark.parametrize(
    ("argv", "stack_from"),
    [
        ([], logging.ERROR),
        (["--zap-devel"], logging.WARNING),
        (["--zap-devel", "--zap-stacktrace-level=panic"], logging.CRITICAL),
        (["--zap-stacktrace-level=info"], logging.INFO),
    ],
)
def test_stack_traces(argv: list[str], stack_from: int, root_handler: logging.Handler) -> None:
    configure(*argv)
    levels = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    for level, line in zip(levels, lines(root_handler, *levels), strict=True):
        assert ("stacktrace" in line) == (level >= stack_from), line
        if level >= stack_from:
            assert "in lines" in str(line["stacktrace"])


@pytest.mark.parametrize(
    "arg",
    [
        "--zap-log-level=verbose",
        "--zap-log-level=0",
        "--zap-devel=sometimes",
        "--zap-encoder=logfmt",
        "--zap-stacktrace-level=debug",
        "--zap-time-encoding=nano",
    ],
)
def test_bad_values_exit_2_naming_the_flag(arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["sidecar", arg])
    assert exited.value.code == 2
    flag, _, value = arg.partition("=")
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"epp sidecar: error: argument {flag}: ") and repr(value) in error


def test_no_verbosity_flag_as_llm_ds_sidecar_has_none(capsys: pytest.CaptureFixture[str]) -> None:
    """-v is GIE's EPP's (its logging options); llm-d's sidecar binds only the zap flags."""
    with pytest.raises(SystemExit) as exited:
        parse_args(["sidecar", "-v", "4"])
    assert exited.value.code == 2
    assert "unrecognized arguments: -v 4" in capsys.readouterr().err
