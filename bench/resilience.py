"""Failures under load through `epp run`'s stack (Envoy + the EPP + simulators on 127.0.0.1).

Three scenarios, each under an open-loop stream of streaming completions (`--rate` per second):

  sim-kill   kill -9 one simulator mid-run. Requests that had received no byte yet must all be
             served (retried on the EPP's fallback); streams already flowing must end (cut, never
             hang).
  sim-stop   SIGSTOP one simulator for `--stop-seconds`, then SIGCONT. After the first request that
             timed out on it, none may be routed to it; none may wait for its first byte longer
             than the first-byte bound (`--first-byte-timeout`) plus the retry.
  epp-kill   kill -9 the EPP mid-run. Streams in flight must complete; new requests get 503 until
             the EPP is back (restarted here after `--epp-down-seconds`, as `epp run` does).

Bounded (`--seconds` of load per scenario), loopback only; prints one JSON line per scenario:

    .venv/bin/python bench/resilience.py --scenario all --rate 20 --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from epp.stack.envoy import EnvoyOptions
from epp.stack.stack import Stack, StackConfig

SCENARIOS = ("sim-kill", "sim-stop", "epp-kill")
MODEL = "sim-model"
PICKER_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: ENDPOINTS}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - pluginRef: max-score-picker
"""


@dataclass
class Outcome:
    started: float
    first_byte: float | None = None  # response headers received
    ended: float | None = None
    status: int | None = None
    chunks: int = 0
    done: bool = False  # the stream ended with [DONE]
    error: str | None = None
    destination: str = ""
    pod: str = ""


@dataclass
class Load:
    session: aiohttp.ClientSession
    url: str
    max_tokens: int
    outcomes: list[Outcome] = field(default_factory=list)

    async def one(self, i: int) -> None:
        outcome = Outcome(started=time.monotonic())
        self.outcomes.append(outcome)
        body = {"model": MODEL, "prompt": f"request {i}: tell a story", "max_tokens": self.max_tokens}
        body |= {"stream": True, "ignore_eos": True}
        try:
            async with self.session.post(f"{self.url}/v1/completions", json=body) as response:
                outcome.first_byte = time.monotonic()  # the response headers: Envoy can no longer retry
                outcome.status = response.status
                outcome.destination = response.headers.get("x-epp-destination", "")
                outcome.pod = response.headers.get("x-inference-pod", "")
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    outcome.chunks += 1
                    outcome.done = line.strip() == b"data: [DONE]"
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.error = type(exc).__name__
        outcome.ended = time.monotonic()

    async def run(self, rate: float, seconds: float) -> None:
        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(self.one(i)))
        await asyncio.gather(*tasks)


def served(o: Outcome) -> bool:
    return o.status == 200 and o.done


def summary(outcomes: list[Outcome], event: float) -> dict[str, Any]:
    """Requests split by what they had received when the failure happened at `event`: nothing yet
    (sent before it without response headers, or started after it), or a response flowing."""
    before = [o for o in outcomes if o.ended is not None and o.ended <= event]
    flowing = [o for o in outcomes if o.first_byte is not None and o.first_byte <= event < (o.ended or 0)]
    waiting = [o for o in outcomes if o not in before and o not in flowing and o.started <= event]
    later = [o for o in outcomes if o.started > event]
    longest = max((o.ended or 0) - o.started for o in outcomes)
    return {
        "requests": len(outcomes),
        "served": sum(served(o) for o in outcomes),
        "sent_no_byte_yet_at_failure": len(waiting),
        "sent_no_byte_yet_failed": sum(not served(o) for o in waiting),
        "started_after_failure": len(later),
        "started_after_failure_failed": sum(not served(o) for o in later),
        "flowing_at_failure": len(flowing),
        "flowing_completed": sum(served(o) for o in flowing),
        "flowing_cut": sum(not served(o) for o in flowing),
        "flowing_cut_ended_within_s": round(
            max(((o.ended or 0) - event for o in flowing if not served(o)), default=0.0), 2
        ),
        "longest_request_s": round(longest, 2),
        "errors": sorted({f"{o.status}:{o.error}" for o in outcomes if not served(o)}),
    }


async def scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"resilience-{name}-"))
    envoy = EnvoyOptions(listen_port=0, admin_port=0)
    if hasattr(envoy, "first_byte_timeout"):  # absent before the fallback work: measures the old stack
        envoy = dataclasses.replace(envoy, first_byte_timeout=f"{args.first_byte_timeout}s")
    config = StackConfig(
        run_dir=run_dir,
        sims=args.sims,
        sim_args=[f"--profile={args.profile}"],
        epp_args=[
            "--served-header=x-epp-destination",
            f"--config-text={PICKER_CONFIG.replace('ENDPOINTS', str(args.endpoints))}",
        ],
        envoy=envoy,
    )
    async with Stack(config) as stack:
        timeout = aiohttp.ClientTimeout(total=args.client_timeout)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            load = Load(session, stack.gateway_url, args.max_tokens)
            running = asyncio.create_task(load.run(args.rate, args.seconds))
            await asyncio.sleep(args.seconds / 3)
            event = time.monotonic()
            result: dict[str, Any] = {"scenario": name, "endpoints_listed": args.endpoints}
            if name == "sim-kill":
                victim = stack.sims[0]
                await stack.sim_process(victim.name).kill()
            elif name == "sim-stop":
                victim = stack.sims[0]
                pid = stack.sim_process(victim.name).pid
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(args.stop_seconds)
                os.kill(pid, signal.SIGCONT)
            else:
                assert stack.epp is not None
                await stack.epp.kill()
                await asyncio.sleep(args.epp_down_seconds)
                await stack.restart_epp()
                result["epp_restarted_after_s"] = round(time.monotonic() - event, 2)
            await running
            outcomes = load.outcomes
            result |= summary(outcomes, event)
            if name in ("sim-kill", "sim-stop"):
                primary = [o for o in outcomes if o.destination.split(",")[0] == victim.hostport]
                late = [o for o in primary if o.started > event]
                result["routed_to_victim_first_after_failure"] = len(late)
                result["last_routed_to_victim_after_s"] = round(
                    max((o.started - event for o in late), default=0.0), 2
                )
                result["served_by_victim_after_failure"] = sum(
                    o.pod == victim.name and o.started > event for o in outcomes
                )
            if name == "sim-stop":
                waits = [(o.first_byte or o.ended or 0) - o.started for o in outcomes if o.started > event]
                result["longest_wait_for_first_byte_after_stop_s"] = round(max(waits, default=0.0), 2)
                result["first_byte_bound_s"] = args.first_byte_timeout
            if name == "epp-kill":
                result["new_requests_503_while_down"] = sum(o.status == 503 for o in outcomes)
            stats = await stack.envoy_stats("cluster.pool.upstream_rq_retry")
            result["envoy_retries"] = stats.get("cluster.pool.upstream_rq_retry", 0)
            result["envoy_retry_success"] = stats.get("cluster.pool.upstream_rq_retry_success", 0)
            result["run_dir"] = str(run_dir)
            return result


async def main(args: argparse.Namespace) -> None:
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    for name in names:
        print(json.dumps(await scenario(name, args)), flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument("--rate", type=float, default=20.0, help="streaming completions per second (20)")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds of load per scenario (12)")
    parser.add_argument("--sims", type=int, default=4)
    parser.add_argument(
        "--endpoints", type=int, default=2, help="the picker's maxNumOfEndpoints: primary + fallbacks (2)"
    )
    parser.add_argument("--profile", default="llama-3.1-8b-h100", help="simulator profile")
    parser.add_argument("--max-tokens", type=int, default=150, help="tokens per generation (150)")
    parser.add_argument("--stop-seconds", type=float, default=10.0, help="sim-stop: SIGSTOP duration (10)")
    parser.add_argument("--first-byte-timeout", type=float, default=2.0, help="Envoy's per-try bound (2)")
    parser.add_argument("--epp-down-seconds", type=float, default=1.0, help="epp-kill: time before restart")
    parser.add_argument("--client-timeout", type=float, default=60.0, help="a request's total bound (60)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
