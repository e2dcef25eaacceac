"""CPU per request of the EPP, the minimal grpc.aio server, the simulator and the sidecar, each on
asyncio's loop and on uvloop (`--event-loop`), driven directly (no Envoy: less noise on a shared
machine).

Eight server processes run side by side, plaintext, the ext_proc servers over the same simulators
(`epp sim`): `epp serve --event-loop asyncio|uvloop` (GIE's default profile),
epp.bench.minimal_extproc, `epp sim --count 1` (tiny-test profile at time scale 0.001) and `epp
sidecar` in front of one of the simulators, with the same flag. A client in this process sends
each server in turn, in a new order every round, `--requests` requests at `--concurrency` at a
time: to the ext_proc servers, over gRPC, the buffered-mode exchange Envoy sends for a routed
request (request headers, body, response headers); to the simulator and the sidecar the same
body, a streamed completion of one token, over HTTP. A server's CPU per request is its process CPU
over the round (utime + stime) less its idle CPU (the EPP scraping the simulators), over the
requests. The two loops are compared round by round (uvloop / asyncio of the same server in the
same round; with `--together`, driven at the same time, which pairs them closer on a loaded
machine).

    .venv/bin/python bench/event_loop_cost.py [--requests 2000] [--rounds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import flow_control_overhead  # beside this script
import grpc
import yaml

from epp import eventloop
from epp.bench.overhead import cpu_seconds
from epp.extproc.pb import ext_proc, ext_proc_grpc
from epp.stack.processes import ManagedProcess, epp_command, ready_file_probe, wait_until

LOOPS = ("asyncio", "uvloop")
IDLE_SECONDS = 2.0


KINDS = ("EPP", "minimal", "simulator", "sidecar")


def server_argv(kind: str, loop: str, endpoints: Path, ready: Path) -> list[str]:
    if kind == "sidecar":  # in front of the first simulator (a plain request: proxied to it)
        decode = yaml.safe_load(endpoints.read_text())["endpoints"][0]
        sidecar = ["sidecar", "--host=127.0.0.1", "--port=0", f"--model-server-port={decode['port']}"]
        sidecar.append(f"--endpoints-file={endpoints}")
        return epp_command(*sidecar, f"--ready-file={ready}", f"--event-loop={loop}")
    if kind == "simulator":
        sim = [
            "sim",
            "--count=1",
            "--port=0",
            f"--model={flow_control_overhead.MODEL}",
            "--profile=tiny-test",
        ]
        return epp_command(*sim, "--time-scale=0.001", f"--ready-file={ready}", f"--event-loop={loop}")
    common = [
        "--host=127.0.0.1",
        "--grpc-port=0",
        "--secure-serving=false",
        f"--endpoints-file={endpoints}",
        f"--ready-file={ready}",
        f"--event-loop={loop}",
    ]
    if kind == "minimal":
        return [sys.executable, "-m", "epp.bench.minimal_extproc", *common]
    return epp_command("serve", *common, "--grpc-health-port=0", "--metrics-port=0", "--drain-timeout=0s")


async def start(name: str, argv: list[str], ready: Path, scratch: Path) -> tuple[ManagedProcess, object]:
    process = ManagedProcess(name, argv, scratch / f"{name}.log")
    await process.start()
    return process, await wait_until(ready_file_probe(ready), name, 60.0, [process])


async def exchange(
    stub: ext_proc_grpc.ExternalProcessorStub, messages: list[ext_proc.ProcessingRequest]
) -> None:
    """One request as Envoy's buffered bootstrap sends it: each message once the last is answered."""
    call = stub.Process()
    for message in messages:
        await call.write(message)
        if await call.read() is grpc.aio.EOF:
            raise RuntimeError("the server ended the stream early")
    await call.done_writing()


async def completion(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    headers = {"content-type": "application/json"}
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"the simulator answered {response.status}")


async def drive(target: str, batch: list[list[ext_proc.ProcessingRequest]], concurrency: int) -> None:
    """`batch` to an ext_proc server (a host:port) or, its bodies, to a simulator (a URL)."""
    pending = iter(batch)

    async def workers(send: Callable[[list[ext_proc.ProcessingRequest]], Awaitable[None]]) -> None:
        async def worker() -> None:
            for messages in pending:
                await send(messages)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    if target.startswith("http://"):
        async with aiohttp.ClientSession() as session:
            await workers(lambda m: completion(session, target, m[1].request_body.body))
        return
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ext_proc_grpc.ExternalProcessorStub(channel)
        await workers(lambda m: exchange(stub, m))


def listen_target(ready: dict[str, Any]) -> str:
    """Where a server listens, from its ready file: a simulator's URL or an ext_proc host:port."""
    if "endpoints" in ready or "scheme" in ready:
        endpoint = ready["endpoints"][0] if "endpoints" in ready else ready
        return f"http://{endpoint['host']}:{endpoint['port']}/v1/completions"
    return f"127.0.0.1:{ready['grpc_port']}"


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    model = flow_control_overhead.MODEL
    with tempfile.TemporaryDirectory() as name:
        scratch = Path(name)
        sims, sim_ready = None, scratch / "sims.json"
        processes: list[ManagedProcess] = []
        try:
            sim_argv = ["sim", "--count=2", "--port=0", f"--model={model}", "--profile=tiny-test"]
            sims, info = await start(
                "sims", epp_command(*sim_argv, f"--ready-file={sim_ready}"), sim_ready, scratch
            )
            processes.append(sims)
            assert isinstance(info, dict)
            endpoints = scratch / "endpoints.yaml"
            entries = [
                {"name": e["name"], "address": e["host"], "port": e["port"], "models": [model]}
                for e in info["endpoints"]
            ]
            endpoints.write_text(yaml.safe_dump({"endpoints": entries}))
            servers: dict[str, tuple[ManagedProcess, str]] = {}
            for kind in KINDS:
                for loop in LOOPS:
                    label, ready = f"{kind} [{loop}]", scratch / f"{kind}-{loop}.json"
                    process, ports = await start(
                        label, server_argv(kind, loop, endpoints, ready), ready, scratch
                    )
                    processes.append(process)
                    assert isinstance(ports, dict)
                    servers[label] = (process, listen_target(ports))
            warm = flow_control_overhead.exchanges(200, rng)
            for _, target in servers.values():
                await drive(target, warm, args.concurrency)
            before = {label: cpu_seconds(p.pid) for label, (p, _) in servers.items()}
            await asyncio.sleep(IDLE_SECONDS)
            idle = {
                label: (cpu_seconds(p.pid) - before[label]) / IDLE_SECONDS
                for label, (p, _) in servers.items()
            }
            per_request: dict[str, list[float]] = {label: [] for label in servers}
            # Driven together: a server on both loops at once, under the same machine load.
            groups = [[f"{k} [{loop}]" for loop in LOOPS] for k in KINDS] if args.together else None
            order = groups or [[label] for label in servers]
            for round_ in range(args.rounds):
                rng.shuffle(order)
                for labels in order:
                    batch = flow_control_overhead.exchanges(args.requests, rng)
                    cpu0 = {label: cpu_seconds(servers[label][0].pid) for label in labels}
                    wall0 = time.monotonic()
                    await asyncio.gather(
                        *(drive(servers[label][1], batch, args.concurrency) for label in labels)
                    )
                    wall = time.monotonic() - wall0
                    for label in labels:
                        cpu = cpu_seconds(servers[label][0].pid) - cpu0[label]
                        per_request[label].append(max(cpu - idle[label] * wall, 0.0) / len(batch))
                print(
                    f"round {round_ + 1}: "
                    + ", ".join(f"{k} {v[-1] * 1e6:.0f} µs" for k, v in per_request.items()),
                    file=sys.stderr,
                )
        finally:
            for process in reversed(processes):
                await process.stop()
    report(args, per_request, idle)


def report(args: argparse.Namespace, per_request: dict[str, list[float]], idle: dict[str, float]) -> None:
    print(
        f"requests={args.requests} rounds={args.rounds} concurrency={args.concurrency} "
        f"(server CPU per request, µs, each round; median; idle CPU subtracted)"
    )
    for label, runs in per_request.items():
        rounds = " / ".join(f"{r * 1e6:.0f}" for r in runs)
        median = statistics.median(runs) * 1e6
        print(f"{label:>18}: {rounds}; median {median:.0f} µs (idle {idle[label]:.1%} of a core)")
    for kind in KINDS:
        ratios = [
            u / a
            for u, a in zip(per_request[f"{kind} [uvloop]"], per_request[f"{kind} [asyncio]"], strict=True)
        ]
        print(
            f"{kind:>18}: uvloop / asyncio, round by round {' / '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="exchanges per server and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16, help="exchanges in flight at a time")
    parser.add_argument(
        "--together",
        action="store_true",
        help="drive a server's asyncio and uvloop processes at the same time (each its own client "
        "stream), so both see the same machine load, instead of one after the other",
    )
    parser.add_argument("--seed", type=int, default=0)
    eventloop.run(main(parser.parse_args()))
