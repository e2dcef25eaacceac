"""`with_parent_death`: a child ends when its parent is killed with SIGKILL, lives on when the
thread that started it ends, and starts even from a parent busy with gRPC."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from epp.parentdeath import _EXEC, with_parent_death

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)

PARENT = """
import subprocess, sys, time
from epp.parentdeath import _EXEC, with_parent_death
child = subprocess.Popen(with_parent_death(["sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@linux_only
def test_a_child_ends_with_its_parent_killed_with_sigkill() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 10  # the wrapper execs sleep
        while b"sleep" not in Path(f"/proc/{child}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
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


@linux_only
def test_a_child_started_on_a_thread_that_ends_lives_on() -> None:
    """The signal follows the thread that forked: a child of a thread that ended got SIGTERM at
    once (-15), mid-life, while its parent ran on."""
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(
        target=lambda: started.append(subprocess.Popen(with_parent_death(["sleep", "60"])))
    )
    thread.start()
    thread.join()
    child = started[0]
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    finally:
        child.kill()
        child.wait()


def test_nothing_to_set_outside_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert with_parent_death(["sleep", "1"]) == ["sleep", "1"]


def test_a_program_not_found_is_refused_in_the_parent() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program-here"):
        with_parent_death(["no-such-program-here"])


@linux_only
def test_a_child_whose_parent_already_died_runs_nothing() -> None:
    """Its parent gone before the prctl, the signal would never come: the child exits at once."""
    child = subprocess.run(
        [sys.executable, "-I", "-S", _EXEC, "1", "15", "/bin/echo", "ran"], capture_output=True, timeout=30
    )
    assert (child.returncode, child.stdout) == (1, b"")


@linux_only
def test_a_program_that_cannot_run_is_said(tmp_path: Path) -> None:
    not_executable = tmp_path / "program"
    not_executable.write_text("")
    child = subprocess.run(
        [sys.executable, "-I", "-S", _EXEC, str(os.getpid()), "15", str(not_executable)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (child.returncode, child.stderr) == (127, f"epp: cannot run {not_executable}: Permission denied\n")


@linux_only
def test_a_prctl_that_fails_is_said_and_the_child_runs_anyway() -> None:
    """A signal prctl refuses (EINVAL here; a seccomp profile's EPERM alike): the child says so on
    its stderr and runs its program (refusing would stop `epp run` wherever prctl is denied)."""
    child = subprocess.run(
        with_parent_death(["sh", "-c", "echo started"], sig=1000),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 0 and child.stdout == "started\n"
    assert child.stderr == (
        "epp: prctl(PR_SET_PDEATHSIG, 1000) failed (Invalid argument): this process will not stop "
        "if its parent is killed with SIGKILL\n"
    )


async def test_children_of_a_parent_busy_with_grpc_all_start() -> None:
    """Spawned while the parent serves and calls gRPC (as the integration tests' process and a
    `--workers` supervisor do), every child runs its program. With the signal set in a
    preexec_fn, the parent was fork()ed, gRPC's fork handlers restarted its poller in the child
    and close_fds closed the poller's epoll descriptor under it: about one child in five died
    before exec (-6, "epoll_wait error: Bad file descriptor", or -11)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)

    async def calls() -> None:
        while True:
            await stub.Check(health_pb2.HealthCheckRequest())

    traffic = [asyncio.create_task(calls()) for _ in range(4)]
    try:
        codes = []
        for _ in range(60):
            child = await asyncio.create_subprocess_exec(
                *with_parent_death(["true"]), stderr=asyncio.subprocess.PIPE, start_new_session=True
            )
            _, stderr = await child.communicate()
            codes.append((child.returncode, stderr.decode(errors="replace")[-300:]))
        assert [code for code in codes if code[0] != 0] == []
    finally:
        for task in traffic:
            task.cancel()
        await asyncio.gather(*traffic, return_exceptions=True)
        await channel.close()
        await server.stop(None)
