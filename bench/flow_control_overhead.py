"""What GIE's flow-control layer costs the EPP per request when nothing waits, in CPU time.

Each request is a whole ext_proc exchange driven through the EPP's own `ExtProcStream` in this
process, awaited as the gRPC server awaits it (`extend_message_timeout`, the awaited `prepare`
step, then `handle`), with GIE's default profile over `--endpoints` endpoints that never
saturate: once with flow control off (epp/config/default-plugins.yaml) and once with it on
(bench/configs/gie-default-flow-control.yaml: the same profile, the gate and a flowControl
section). `--concurrency` requests are in flight at a time. The two run interleaved in rounds in a
new random order each round; each is reported as the minimum and median over rounds of CPU time
(`time.process_time`) per request, and the paired difference of each round.

    .venv/bin/python bench/flow_control_overhead.py [--requests 500] [--rounds 30] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import statistics
import time
from pathlib import Path

import observe_overhead  # beside this script
import orjson

from epp.config.loader import load_config_file
from epp.extproc.pb import BodyMode, core, ext_proc
from epp.extproc.stream import ExtProcStream, StreamOptions
from epp.requestcontrol import Director

MODEL = observe_overhead.MODEL
FLOW_CONTROL = Path(__file__).parent / "configs" / "gie-default-flow-control.yaml"
PREFIX_GROUPS = 16
PROMPT_BYTES = 1024


def make_director(endpoints: int, flow_control: bool, rng: random.Random) -> Director:
    config = load_config_file(FLOW_CONTROL) if flow_control else None  # None: GIE's default profile
    director = observe_overhead.make_director(endpoints, rng, config)
    assert (director.flow_control is not None) == flow_control
    return director


def exchanges(count: int, rng: random.Random) -> list[list[ext_proc.ProcessingRequest]]:
    """Buffered-mode exchanges, as the standalone bootstrap sends them."""
    prefixes = [rng.randbytes(PROMPT_BYTES // 2).hex() for _ in range(PREFIX_GROUPS)]
    mode = BodyMode.BUFFERED
    status = core.HeaderMap(headers=[core.HeaderValue(key=":status", raw_value=b"200")])
    headers = {":path": "/v1/completions", ":method": "POST", "content-type": "application/json"}
    header_map = core.HeaderMap(
        headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    batch = []
    for i in range(count):
        prompt = prefixes[i % PREFIX_GROUPS] + f" question {i}: " + rng.randbytes(64).hex()
        body = orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1, "stream": True})
        batch.append(
            [
                ext_proc.ProcessingRequest(
                    request_headers=ext_proc.HttpHeaders(headers=header_map),
                    protocol_config=ext_proc.ProtocolConfiguration(request_body_mode=mode),
                ),
                ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=True)),
                ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders(headers=status)),
            ]
        )
    return batch


async def exchange(
    director: Director, options: StreamOptions, messages: list[ext_proc.ProcessingRequest]
) -> None:
    """One request as epp.extproc.server drives it."""
    stream = ExtProcStream(director, options)
    for message in messages:
        stream.extend_message_timeout(message)
        await stream.prepare(message, 10.0)
        for _ in stream.handle(message):
            pass
    stream.close()


async def run_round(
    director: Director, batch: list[list[ext_proc.ProcessingRequest]], concurrency: int
) -> float:
    options = StreamOptions()
    gc.collect()
    started = time.process_time()
    for first in range(0, len(batch), concurrency):
        await asyncio.gather(*(exchange(director, options, m) for m in batch[first : first + concurrency]))
    return (time.process_time() - started) / len(batch)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    directors = {name: make_director(args.endpoints, name == "on", rng) for name in ("off", "on")}
    batch = exchanges(args.requests, rng)
    for director in directors.values():  # the prefix index and the interpreter warm up
        await run_round(director, batch, args.concurrency)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await run_round(directors[args.profile], batch, args.concurrency)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return
    results: dict[str, list[float]] = {name: [] for name in directors}
    order = list(directors)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            results[name].append(await run_round(directors[name], batch, args.concurrency))
    added = [on - off for on, off in zip(results["on"], results["off"], strict=True)]
    print(
        f"{args.requests} requests x {args.rounds} rounds each, {args.concurrency} in flight, "
        f"{args.endpoints} endpoints, GIE's default profile; CPU time per request\n"
    )
    print("| flow control | min | median |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {min(values) * 1e6:.0f} µs | {statistics.median(values) * 1e6:.0f} µs |")
    base = statistics.median(results["off"])
    print(
        f"\nadded by flow control, paired per round: median {statistics.median(added) * 1e6:+.1f} µs "
        f"({statistics.median(added) / base:+.1%}), min {min(added) * 1e6:+.1f} µs, "
        f"max {max(added) * 1e6:+.1f} µs"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=2)
    parser.add_argument("--requests", type=int, default=500, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at a time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", choices=("off", "on"), help="instead: one round under cProfile")
    asyncio.run(main(parser.parse_args()))
