"""controller-runtime's zap logging flags (`--zap-devel`, `--zap-encoder`, `--zap-log-level`,
`--zap-stacktrace-level`, `--zap-time-encoding`, bound by zap.Options.BindFlags), which both GIE's
EPP and llm-d's routing sidecar accept, mapped onto Python logging. Values parse as
controller-runtime parses them (case-insensitive, same names); what a command makes of them
differs, so `epp serve` (epp.gieflags) and `epp sidecar` (epp.sidecar.cli) each give their
defaults and help.

zap's level is minus logr's verbosity, and `debug` is verbosity 1: GIE and llm-d log their debug
lines at verbosity 4 (their DEBUG), so only 4 and above reach Python's DEBUG."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import traceback
from collections.abc import Callable, Collection, Mapping

from epp.tls import parse_bool

DEBUG_VERBOSITY = 4
# controller-runtime's --zap-log-level names -> zap levels (minus the verbosity).
_LEVEL_NAMES = {"debug": -1, "info": 0, "error": 2, "panic": 4}
_PYTHON_LEVELS = {2: logging.ERROR, 4: logging.CRITICAL}
# --zap-stacktrace-level names -> the Python level at and above which records carry the stack.
STACK_LEVELS = {"info": logging.INFO, "error": logging.ERROR, "panic": logging.CRITICAL}
ENCODERS = ("json", "console")
# zap's name where Python's differs (zap writes `warn`).
_LEVEL_LABELS = {logging.WARNING: "warn"}


def python_level(zap_level: int) -> int:
    """Verbosity 4 and above is DEBUG; verbosities 1 to 3 log nothing more than info here."""
    if zap_level <= -DEBUG_VERBOSITY:
        return logging.DEBUG
    return _PYTHON_LEVELS.get(zap_level, logging.INFO)


def log_level(value: str) -> int:
    """--zap-log-level: a level name, or a verbosity greater than 0; the Python level it means."""
    named = _LEVEL_NAMES.get(value.lower())
    if named is not None:
        return python_level(named)
    try:
        verbosity = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid log level {value!r}: debug, info, error, panic or a number above 0"
        ) from None
    if verbosity < 1:
        raise argparse.ArgumentTypeError(f"invalid log level {value!r}: a verbosity must be above 0")
    return python_level(-verbosity)


def _one_of(what: str, names: Collection[str]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.lower()
        if lowered not in names:
            raise argparse.ArgumentTypeError(f"invalid {what} {value!r}: one of {', '.join(names)}")
        return lowered

    return parse


def _epoch(created: float) -> float:
    return created


def _millis(created: float) -> float:
    return created * 1000


def _nanos(created: float) -> int:
    return int(created * 1e9)


def _iso8601(created: float) -> str:
    """zap's ISO8601 (millisecond precision), in UTC."""
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _rfc3339(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339nano(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return (
        moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(created * 1e9) % 1_000_000_000:09d}".rstrip("0") + "Z"
    )


# controller-runtime's --zap-time-encoding values -> the JSON `ts` they give.
TIME_ENCODINGS: dict[str, Callable[[float], float | int | str]] = {
    "epoch": _epoch,
    "millis": _millis,
    "nanos": _nanos,
    "iso8601": _iso8601,
    "rfc3339": _rfc3339,
    "rfc3339nano": _rfc3339nano,
}


def add_arguments(
    group: argparse._ArgumentGroup, *, development: bool, time_encoding: str | None, helps: Mapping[str, str]
) -> None:
    """The five flags with this command's defaults; `helps` has each one's text by flag name."""
    group.add_argument(
        "--zap-devel",
        type=parse_bool,
        nargs="?",
        const=True,
        default=development,
        metavar="BOOL",
        help=helps["zap-devel"],
    )
    group.add_argument(
        "--zap-encoder",
        type=_one_of("encoder", ENCODERS),
        metavar="|".join(ENCODERS),
        help=helps["zap-encoder"],
    )
    group.add_argument(
        "--zap-log-level", type=log_level, metavar="debug|info|error|panic|N", help=helps["zap-log-level"]
    )
    group.add_argument(
        "--zap-stacktrace-level",
        type=_one_of("stacktrace level", STACK_LEVELS),
        metavar="|".join(STACK_LEVELS),
        help=helps["zap-stacktrace-level"],
    )
    group.add_argument(
        "--zap-time-encoding",
        type=_one_of("time encoding", TIME_ENCODINGS),
        default=time_encoding,
        metavar="|".join(TIME_ENCODINGS),
        help=helps["zap-time-encoding"],
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the keys of zap's production encoder config."""

    def __init__(self, time_encoding: str) -> None:
        super().__init__()
        self._ts = TIME_ENCODINGS[time_encoding]

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self._ts(record.created),
            "level": _LEVEL_LABELS.get(record.levelno, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stacktrace"] = record.stack_info
        return json.dumps(entry)


class _StackFilter(logging.Filter):
    """zap's stacktrace level: records at or above it carry the stack of the logging call."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self._level and not record.stack_info and not record.exc_info:
            internal = {logging.__file__, __file__}
            frames = [frame for frame in traceback.extract_stack() if frame.filename not in internal]
            record.stack_info = "Stack (most recent call last):\n" + "".join(traceback.format_list(frames))
        return True


def configure(*, level: int | None, json_time: str | None, stack_level: int | None) -> None:
    """The root logger at `level` (unchanged if None); its handlers writing JSON lines with that
    time encoding (unchanged if None) and attaching the stack at and above `stack_level`."""
    root = logging.getLogger()
    if level is not None:
        root.setLevel(level)
    for handler in root.handlers:
        if json_time is not None:
            handler.setFormatter(JsonFormatter(json_time))
        if stack_level is not None:
            handler.addFilter(_StackFilter(stack_level))
