"""Restart backoff of `epp run`'s supervisor, the processes it stops, and their logs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from epp.stack.processes import ManagedProcess, RestartBackoff
from epp.stack.stack import Stack, StackConfig


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    now = [0.0]
    backoff = RestartBackoff(initial=0.5, maximum=4.0, reset_after=60.0, clock=lambda: now[0])
    delays = []
    for _ in range(6):
        delays.append(backoff.next_delay())
        backoff.started()
        now[0] += 1.0  # dies again a second after each restart
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.restarts == 6
    now[0] += 60.0  # the last restart stayed up a minute
    assert backoff.next_delay() == 0.5


def sleeping(pid: int) -> bool:
    """Whether `pid` still runs the test's sleep (a killed one is a zombie with no command line)."""
    try:
        return b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


async def test_stopping_a_process_that_died_ends_the_children_it_left(tmp_path: Path) -> None:
    """`epp serve --workers` killed with -9 leaves its workers running, holding its ports (the
    restarted EPP failed to bind them, again and again) and serving ext_proc on the shared port
    with the dead EPP's state. Stopping the dead process ends what is left of its session."""
    child_pid = tmp_path / "child.pid"
    leaver = (
        "import subprocess, sys, pathlib; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"pathlib.Path({str(child_pid)!r}).write_text(str(p.pid))"
    )
    process = ManagedProcess("leaver", [sys.executable, "-c", leaver], tmp_path / "leaver.log")
    await process.start()
    assert process.process is not None
    await asyncio.wait_for(process.process.wait(), timeout=30)
    orphan = int(child_pid.read_text())
    os.kill(orphan, 0)  # still running, its parent gone
    await process.stop()
    deadline = asyncio.get_running_loop().time() + 10
    while sleeping(orphan):
        assert asyncio.get_running_loop().time() < deadline, "the orphan is still running"
        await asyncio.sleep(0.05)


class _StopHere(Exception):
    pass


async def test_a_runs_logs_start_empty_and_the_last_runs_are_kept_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`epp run` again in the same run directory: the earlier run's logs become `*.log.1` (the
    one before that is dropped), so `run/epp.log` holds this run's lines alone; what is not a log
    (the generated Envoy bootstrap) stays."""
    (tmp_path / "epp.log").write_text("the last run\n")
    (tmp_path / "epp.log.1").write_text("the run before\n")
    (tmp_path / "sim-7.log").write_text("a simulator this run does not start\n")
    (tmp_path / "envoy.yaml").write_text("static_resources: {}\n")

    async def stop_before_the_simulators(self: Stack) -> None:
        raise _StopHere

    monkeypatch.setattr(Stack, "start_sims", stop_before_the_simulators)
    stack = Stack(StackConfig(run_dir=tmp_path))
    with pytest.raises(_StopHere):
        await stack.start()
    await stack.stop()
    assert sorted(os.listdir(tmp_path)) == ["envoy.yaml", "epp.log.1", "sim-7.log.1"]
    assert (tmp_path / "epp.log.1").read_text() == "the last run\n"
    assert (tmp_path / "sim-7.log.1").read_text() == "a simulator this run does not start\n"


async def test_a_process_restarted_within_a_run_appends_to_its_log(tmp_path: Path) -> None:
    """The EPP `epp run` restarts writes after the lines of the one that died."""
    log = tmp_path / "epp.log"
    for said in ("first", "restarted"):
        process = ManagedProcess("epp", [sys.executable, "-c", f"print({said!r})"], log)
        await process.start()
        assert process.process is not None
        await asyncio.wait_for(process.process.wait(), timeout=30)
    assert log.read_text() == "first\nrestarted\n"
