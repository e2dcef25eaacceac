"""`epp run`'s restart of a dead EPP says what failed: the EPP itself (it did not come back) or
Envoy's health check of an EPP that runs again. The stack here stands in for processes whose
failure takes a minute to produce (Envoy's check times out after STARTUP_TIMEOUT)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from epp.stack.cli import _restart_epp
from epp.stack.envoy import EnvoyOptions
from epp.stack.processes import EnvoyDidNotSeeEpp, ProcessFailed, RestartBackoff
from epp.stack.stack import StackConfig


class Process:
    def __init__(self, log: str, returncode: int = -9) -> None:
        self.log_path = Path(log)
        self.returncode = returncode


class RestartingStack:
    """Stack's restart interface, failing as told."""

    def __init__(
        self, failure: ProcessFailed | None, body_mode: str = "buffered", returncode: int = -9
    ) -> None:
        self.config = StackConfig(run_dir=Path("run"), envoy=EnvoyOptions(body_mode=body_mode))
        self.epp = Process("run/epp.log", returncode)
        self.envoy = Process("run/envoy.log")
        self.failure = failure

    async def restart_epp(self) -> None:
        if self.failure is not None:
            raise self.failure


async def restart(failure: ProcessFailed | None, capsys: pytest.CaptureFixture[str]) -> tuple[str, int]:
    said, restarts = await restart_lines(failure, capsys)
    return said[-1], restarts


async def restart_lines(
    failure: ProcessFailed | None,
    capsys: pytest.CaptureFixture[str],
    body_mode: str = "buffered",
    returncode: int = -9,
) -> tuple[list[str], int]:
    backoff = RestartBackoff(initial=0.0)
    stack: Any = RestartingStack(failure, body_mode, returncode)
    await _restart_epp(stack, backoff, asyncio.Event())
    return capsys.readouterr().out.splitlines(), backoff.restarts


async def test_envoys_health_check_timing_out_is_not_called_the_epp_not_coming_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    timeout = "timed out after 60s waiting for Envoy to find the EPP healthy"
    said, restarts = await restart(EnvoyDidNotSeeEpp(timeout), capsys)
    assert said == (
        "the EPP runs again (restart 1), but Envoy did not find it healthy: new requests get 503 "
        f"until it does (Envoy's log run/envoy.log): {timeout}"
    )
    assert restarts == 1  # it runs: no restart follows
    said, restarts = await restart(ProcessFailed("epp exited with 1"), capsys)
    assert said == "the EPP did not come back: epp exited with 1" and restarts == 0
    said, restarts = await restart(None, capsys)
    assert said == "the EPP is back (restart 1)" and restarts == 1


async def test_the_restart_says_streams_go_on_only_where_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    """In full-duplex mode every response chunk passes through the EPP, so its death cuts the
    streams in flight (8 of 8 under `epp run --body-mode full-duplex`); the line used to promise
    they go on, which only buffered mode's fail-open response path does."""
    said, _ = await restart_lines(None, capsys, "buffered")
    assert said[0] == (
        "the EPP exited with -9; restarting it in 0s (log run/epp.log; streams already routed go on)"
    )
    said, _ = await restart_lines(None, capsys, "full-duplex")
    assert said[0] == (
        "the EPP exited with -9; restarting it in 0s (log run/epp.log; its streams in flight were cut: "
        "full-duplex passes every chunk through it)"
    )


async def test_an_epp_stopped_by_a_signal_is_not_said_to_have_cut_its_streams(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`kill -TERM` of the EPP under `epp run --body-mode full-duplex` with 16 streams open: the
    12 read to their end all ended whole, the EPP exiting 0 once they had (1.7 s), and the line
    said "its streams in flight were cut". An EPP exits 0 only on a signal, after its streams
    ended or its --shutdown-grace did."""
    said, _ = await restart_lines(None, capsys, "full-duplex", returncode=0)
    assert said[0] == (
        "the EPP exited with 0; restarting it in 0s (log run/epp.log; it stopped on a signal, after its "
        "streams in flight ended (or its --shutdown-grace did))"
    )
