"""`die_with_parent`: a child started with it ends when its parent is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epp.signals import die_with_parent

PARENT = """
import subprocess, sys, time
from epp.signals import die_with_parent
child = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
time.sleep(60)
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_ends_with_its_parent_killed_with_sigkill() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert running(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not running(child), "the child outlived its parent"
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_nothing_to_set_outside_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert die_with_parent() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_prctl_that_fails_is_said_and_the_child_runs_anyway() -> None:
    """A signal prctl refuses (EINVAL here; a seccomp profile's EPERM alike): the child says so on
    its stderr and runs its program (refusing would stop `epp run` wherever prctl is denied)."""
    child = subprocess.run(
        ["sh", "-c", "echo started"],
        preexec_fn=die_with_parent(1000),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 0 and child.stdout == "started\n"
    assert child.stderr == (
        "epp: prctl(PR_SET_PDEATHSIG, 1000) failed (Invalid argument): this process will not stop "
        "if its parent is killed with SIGKILL\n"
    )
