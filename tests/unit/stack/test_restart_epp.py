"""`epp run`'s restart of a dead EPP says what failed: the EPP itself (it did not come back) or
Envoy's health check of an EPP that runs again. The stack here stands in for processes whose
failure takes a minute to produce (Envoy's check times out after STARTUP_TIMEOUT)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from epp.stack.cli import _restart_epp
from epp.stack.processes import EnvoyDidNotSeeEpp, ProcessFailed, RestartBackoff


class Process:
    def __init__(self, log: str) -> None:
        self.log_path = Path(log)
        self.returncode = -9


class RestartingStack:
    """Stack's restart interface, failing as told."""

    def __init__(self, failure: ProcessFailed | None) -> None:
        self.epp = Process("run/epp.log")
        self.envoy = Process("run/envoy.log")
        self.failure = failure

    async def restart_epp(self) -> None:
        if self.failure is not None:
            raise self.failure


async def restart(failure: ProcessFailed | None, capsys: pytest.CaptureFixture[str]) -> tuple[str, int]:
    backoff = RestartBackoff(initial=0.0)
    stack: Any = RestartingStack(failure)
    await _restart_epp(stack, backoff, asyncio.Event())
    return capsys.readouterr().out.splitlines()[-1], backoff.restarts


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
