"""`epp serve --workers 2` stopped as a terminal stops it: Ctrl-C signals the whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epp.replicas.local_redis import redis_server_path

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        redis_server_path() is None, reason="needs redis-server (apt-get install redis-server)"
    ),
]


def test_a_ctrl_c_of_the_process_group_leaves_the_private_redis_to_the_drain(tmp_path: Path) -> None:
    """The private redis-server shared the workers' process group: a terminal's Ctrl-C stopped it
    at once, and each worker spent its drain window routing on local state ("replica sync: Redis
    at unix://... failed (read: Connection closed by server.)", then nothing shared for the 30 s
    of the default drain). It is stopped by the supervisor once the workers are done."""
    ready = tmp_path / "epp.ready.json"
    ports = ["--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", "--host=127.0.0.1"]
    argv = [sys.executable, "-m", "epp.cli", "serve", "--workers=2", "--endpoint=127.0.0.1:9", *ports]
    argv += ["--secure-serving=false", "--drain-timeout=2s", f"--ready-file={ready}"]
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, log = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, log[-2000:]
    assert "draining: still serving ext_proc for 2s" in log
    assert "replica sync: Redis" not in log, log[-2000:]
