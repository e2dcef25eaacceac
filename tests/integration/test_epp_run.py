"""`epp run` (what `make run` starts) as a user runs it: the printed gateway answers, a model server
that dies leaves rotation while the rest serve on, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

BODY = {"model": "sim-model", "prompt": "hello", "max_tokens": 2}


async def read_until(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> re.Match[str]:
    """Lines of `epp run`'s output until one matches (the command prints when it is ready)."""
    while True:
        line = (await asyncio.wait_for(stream.readline(), timeout=60)).decode()
        assert line, f"epp run ended before printing {pattern!r}:\n{''.join(seen)}"
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found


@asynccontextmanager
async def epp_run(tmp_path: Path, sims: int, *extra: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`epp run` in a session of its own: whatever the test's outcome, no process of it outlives
    the test. A test that failed while it ran stops it as a user would (SIGINT): its EPP and
    simulators have sessions of their own, so killing `epp run`'s group alone left them running
    (six sets of orphans from six failed runs)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epp.cli", "run", f"--sims={sims}", f"--run-dir={tmp_path}",
        "--sim-arg=--profile=tiny-test", "--epp-arg=--refresh-metrics-interval=50ms", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        for stop in (None, signal.SIGINT):  # a test that stopped it waits for its exit only
            if process.returncode is None:
                if stop is not None:
                    process.send_signal(stop)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), timeout=5 if stop is None else 60)
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def gateway_url(stdout: asyncio.StreamReader, seen: list[str]) -> str:
    """The gateway's URL, from the curl command `epp run` prints."""
    return (await read_until(stdout, r"curl -si (http://127\.0\.0\.1:\d+)/v1/completions", seen))[1]


async def routing(process: asyncio.subprocess.Process) -> tuple[asyncio.StreamReader, list[str], str]:
    """`epp run`'s output, the lines read from it and its gateway URL, once a request through the
    gateway was routed and answered."""
    assert process.stdout is not None
    seen: list[str] = []
    gateway = await gateway_url(process.stdout, seen)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        assert (await client.post("/v1/completions", json=BODY)).status_code == 200
    return process.stdout, seen, gateway


def child_pid(parent: int, cmdline_part: str) -> int:
    """The pid of `parent`'s child process whose command line contains `cmdline_part`."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        if cmdline_part in Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode():
            return int(child)
    raise AssertionError(f"no child of {parent} runs {cmdline_part!r}")


async def test_epp_run_serves_survives_a_dead_simulator_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    async with epp_run(tmp_path, sims=2) as process:
        assert process.stdout is not None
        seen: list[str] = []
        view = (await read_until(process.stdout, r"Live view\s+(http://127\.0\.0\.1:\d+)/ui/", seen))[1]
        victim = (await read_until(process.stdout, r"(sim-\d+)\s+http://127\.0\.0\.1:\d+", seen))[1]
        gateway = await gateway_url(process.stdout, seen)
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            first = await client.post("/v1/completions", json=BODY)
            assert first.status_code == 200
            decisions = (await client.get(f"{view}/api/decisions")).json()["decisions"]
            assert decisions[0]["destination"]["endpoint"] == first.headers["x-inference-pod"]
            os.kill(child_pid(process.pid, f"--name={victim}"), signal.SIGKILL)
            await read_until(process.stdout, rf"{victim} exited with -9; the others keep serving", seen)
            statuses = [(await client.post("/v1/completions", json=BODY)) for _ in range(10)]
        assert [r.status_code for r in statuses[-5:]] == [200] * 5
        assert victim not in {r.headers["x-inference-pod"] for r in statuses[-5:]}
        process.send_signal(signal.SIGINT)
        await read_until(process.stdout, r"^stopped\.$", seen)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


async def test_epp_run_restarts_a_dead_epp(tmp_path: Path) -> None:
    """kill -9 the EPP under `epp run`: it is restarted (Envoy and the simulators stay) and the
    gateway routes again, instead of the whole stack stopping; the printed live view still answers
    (the new EPP binds the same metrics port)."""
    async with epp_run(tmp_path, sims=1) as process:
        assert process.stdout is not None
        seen: list[str] = []
        view = (await read_until(process.stdout, r"Live view\s+(http://127\.0\.0\.1:\d+)/ui/", seen))[1]
        gateway = await gateway_url(process.stdout, seen)
        assert any("ext_proc on 127.0.0.1:" in line and "mutual TLS with Envoy" in line for line in seen)
        envoy = child_pid(process.pid, "--use-dynamic-base-id")
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            assert (await client.post("/v1/completions", json=BODY)).status_code == 200
            os.kill(child_pid(process.pid, "epp.cli serve"), signal.SIGKILL)
            await read_until(process.stdout, r"the EPP exited with -9; restarting it in", seen)
            await read_until(process.stdout, r"the EPP is back \(restart 1\)", seen)
            routed = await client.post("/v1/completions", json=BODY)
            assert routed.status_code == 200
            decisions = (await client.get(f"{view}/api/decisions")).json()["decisions"]
            assert decisions[0]["destination"]["endpoint"] == routed.headers["x-inference-pod"]
        assert child_pid(process.pid, "--use-dynamic-base-id") == envoy
        process.send_signal(signal.SIGINT)
        await read_until(process.stdout, r"^stopped\.$", seen)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


async def test_epp_run_restarts_a_dead_epp_with_workers(tmp_path: Path) -> None:
    """kill -9 the supervisor of `--workers 2`: the EPP comes back and routes from the first
    request after it says so. Before, Envoy answered 1 to 3 requests 0.1 s apart with 503 (the EPP
    unreachable): "back" came with the ready file, before Envoy's next health check of the EPP."""
    async with epp_run(tmp_path, 1, "--workers=2") as process:
        stdout, seen, gateway = await routing(process)
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            os.kill(child_pid(process.pid, "epp.cli serve"), signal.SIGKILL)
            await read_until(stdout, r"the EPP exited with -9; restarting it in", seen)
            await read_until(stdout, r"the EPP is back \(restart 1\)", seen)
            statuses = [(await client.post("/v1/completions", json=BODY)).status_code for _ in range(5)]
            assert statuses == [200] * 5
        process.send_signal(signal.SIGINT)
        await read_until(stdout, r"^stopped\.$", seen)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children of any of its threads, their children, ...)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for child in (task / "children").read_text().split():
                found |= {int(child), *descendants(int(child))}
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (dead) parent's reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def command_lines(pids: set[int]) -> dict[int, str]:
    """What each of `pids` runs, for a failure's message."""
    return {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:100].decode(errors="replace") for pid in pids}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
async def test_epp_run_killed_with_sigkill_takes_its_processes_with_it(tmp_path: Path) -> None:
    """`epp run` killed with -9 runs no cleanup: Envoy, the EPP (a `--workers` supervisor, its
    workers and its redis-server) and the simulators stayed up, in sessions of their own, holding
    their ports. Each is started with a parent-death signal (SIGTERM) and now ends with it."""
    async with epp_run(tmp_path, 2, "--workers=2") as process:
        await routing(process)
        children = descendants(process.pid)
        # Envoy, the supervisor, 2 workers (+ redis-server when installed), 2 simulators
        assert len(children) >= 6, children
        process.kill()
        await process.wait()
        left = children
        try:
            for _ in range(300):  # each stops as on SIGTERM (the EPP drains for 0 s under epp run)
                left = {pid for pid in left if alive(pid)}
                if not left:
                    break
                await asyncio.sleep(0.1)
            assert not left, command_lines(left)
        finally:
            for pid in left:  # a failed run leaves no orphans behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_epp_run_routes_the_models_its_simulators_serve(tmp_path: Path) -> None:
    """The endpoints file `epp run` writes lists what each simulator reports serving: a model set
    with --sim-arg and its LoRA adapters route (both were 404 'not served by any endpoint of the
    pool', the file naming only --model), and a model no simulator serves is still the EPP's 404."""
    adapters = ("--sim-arg=--lora-modules", "--sim-arg=food-v1", "--sim-arg=food-v2")
    async with epp_run(tmp_path, 1, "--sim-arg=--model=base", *adapters) as process:
        assert process.stdout is not None
        seen: list[str] = []
        gateway = await gateway_url(process.stdout, seen)
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            for model in ("base", "food-v1", "food-v2"):
                reply = await client.post("/v1/completions", json={**BODY, "model": model})
                assert (reply.status_code, reply.json()["model"]) == (200, model)
            missing = await client.post("/v1/completions", json={**BODY, "model": "sim-model"})
        assert missing.status_code == 404
        assert (
            "model 'sim-model' is not served by any endpoint of the pool"
            in missing.json()["error"]["message"]
        )
        process.send_signal(signal.SIGINT)
        await read_until(process.stdout, r"^stopped\.$", seen)


async def test_epp_run_refuses_a_gateway_port_another_gateway_listens_on(tmp_path: Path) -> None:
    """`epp run --port P` with P taken by another Envoy (which listens with SO_REUSEPORT, Envoy's
    default) stops, naming the port: its Envoy joined the other's port and the kernel split the
    clients' connections between the two gateways and their pools, while `epp run` printed P as
    its own."""
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        async with epp_run(tmp_path, 1, f"--port={port}") as process:
            assert process.stdout is not None
            output = (await asyncio.wait_for(process.stdout.read(), timeout=60)).decode()
            assert await asyncio.wait_for(process.wait(), timeout=30) != 0
    assert f"cannot bind '127.0.0.1:{port}': Address already in use" in output
    assert "Gateway (Envoy)" not in output
