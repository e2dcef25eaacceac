"""What the EPP costs with no requests: `epp bench overhead`'s stack (64 simulated endpoints scraped
every 50 ms, GIE's default profile, Envoy, the minimal server), warmed with the bench's requests,
then the EPP's process CPU (utime + stime) over windows of `--seconds` with nothing sent. At
100 req/s `epp bench overhead` subtracts this idle share from the EPP's CPU (one 3 s window), so
a share of a core here is ten times that in ms per request there.

    .venv/bin/python bench/idle_cost.py --idle-seconds 30 --rounds 2

Run it under each tree's PYTHONPATH for a before/after; `--pause` keeps the stack up after the
windows (for a profiler attached to the printed pid) until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from epp.bench.overhead import Prompts, add_arguments, cpu_seconds, measure, stack_config
from epp.stack.stack import Stack


async def run(args: argparse.Namespace) -> None:
    async with Stack(stack_config(args)) as stack:
        assert stack.epp is not None
        prompts = Prompts(args.prompt_tokens, args.shared_tokens, args.seed)
        await measure(stack, stack.gateway_url, stack.epp, prompts.requests(50.0, 2.0))
        await asyncio.sleep(2.0)  # the warm-up's streams and timers done
        print(f"EPP pid {stack.epp.pid}", flush=True)
        for _ in range(args.rounds):
            epp0 = cpu_seconds(stack.epp.pid)
            sims0 = sum(cpu_seconds(p.pid) for p in stack.sim_processes)
            await asyncio.sleep(args.idle_seconds)
            window = args.idle_seconds
            epp = cpu_seconds(stack.epp.pid) - epp0
            sims = sum(cpu_seconds(p.pid) for p in stack.sim_processes) - sims0
            print(
                f"idle {window:.0f} s: EPP {epp:.2f} CPU s ({epp / window:.1%} of a core), "
                f"simulators {sims / window:.0%}; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        if args.pause:
            await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="each window (default 30)")
    parser.add_argument("--pause", action="store_true", help="keep the stack up after the windows")
    parser.set_defaults(run_dir=Path("/tmp/epp-idle-cost"))
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
