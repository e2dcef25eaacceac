"""grpc.aio's log line for a final status Envoy no longer takes is DEBUG, not ERROR."""

from __future__ import annotations

import logging

import pytest

import epp.extproc.server  # noqa: F401  (installs the filter)

GRPC = logging.getLogger("grpc._cython.cygrpc")
LATE = "ExecuteBatchError raised in core by servicer method [%s]"


def _log_late_status() -> None:
    try:
        raise RuntimeError("stream already closed")
    except RuntimeError:
        GRPC.exception(LATE, "/envoy.service.ext_proc.v3.ExternalProcessor/Process")


def test_the_late_status_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        _log_late_status()
        GRPC.error("Unexpected [%s] raised by servicer method", "ValueError")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "Unexpected [ValueError] raised by servicer method")
    ]


def test_the_late_status_shows_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        _log_late_status()
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
