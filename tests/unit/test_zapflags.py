"""controller-runtime's zap flag values, parsed as it parses them, and the JSON lines they give."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from epp import zapflags


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("debug", logging.INFO),  # zap's debug is verbosity 1; the debug lines are verbosity 4
        ("DEBUG", logging.INFO),
        ("info", logging.INFO),
        ("Error", logging.ERROR),
        ("panic", logging.CRITICAL),
        ("3", logging.INFO),
        ("4", logging.DEBUG),
        ("5", logging.DEBUG),
    ],
)
def test_log_levels(value: str, level: int) -> None:
    assert zapflags.log_level(value) == level


@pytest.mark.parametrize("value", ["0", "-4", "warn", "loud", ""])
def test_log_levels_controller_runtime_refuses(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"invalid log level {value!r}"):
        zapflags.log_level(value)


def parser() -> argparse.ArgumentParser:
    parsing = argparse.ArgumentParser(exit_on_error=False)
    helps = dict.fromkeys(("zap-devel", "zap-encoder", "zap-log-level", "zap-stacktrace-level"), "")
    group = parsing.add_argument_group("zap")
    zapflags.add_arguments(
        group, development=False, time_encoding=None, helps={**helps, "zap-time-encoding": ""}
    )
    return parsing


def test_names_are_case_insensitive_and_come_back_lowered() -> None:
    args = parser().parse_args(
        [
            "--zap-encoder=JSON",
            "--zap-stacktrace-level=Panic",
            "--zap-time-encoding=RFC3339Nano",
            "--zap-devel",
        ]
    )
    assert (args.zap_encoder, args.zap_stacktrace_level, args.zap_time_encoding, args.zap_devel) == (
        "json",
        "panic",
        "rfc3339nano",
        True,
    )


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--zap-encoder=text", "invalid encoder 'text': one of json, console"),
        ("--zap-stacktrace-level=warn", "invalid stacktrace level 'warn': one of info, error, panic"),
        ("--zap-time-encoding=nano", "invalid time encoding 'nano'"),  # controller-runtime's is nanos
        ("--zap-devel=maybe", "expected true or false"),
    ],
)
def test_other_values_are_refused_naming_the_flag(arg: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentError, match=message) as refused:
        parser().parse_args([arg])
    assert refused.value.argument_name == arg.partition("=")[0]


def test_json_lines_use_zaps_level_names() -> None:
    record = logging.LogRecord("epp.x", logging.WARNING, __file__, 1, "careful %s", ("now",), None)
    line = json.loads(zapflags.JsonFormatter("epoch").format(record))
    assert line == {"ts": record.created, "level": "warn", "logger": "epp.x", "msg": "careful now"}
