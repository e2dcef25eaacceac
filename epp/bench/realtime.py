"""One real-time run: a fresh Envoy + EPP + simulators stack, the load generator, the teardown.

The EPP gets the policy's EndpointPickerConfig; the Envoy round-robin policy instead sends the load
to the stack's second Envoy listener, which has no ext_proc and balances over the same simulators.
The metrics scrape interval is wall time, so it is set to the modelled interval times the time
scale, keeping the EPP's view of the servers as fresh (in modelled time) as in a virtual run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from epp.bench.loadgen import run_realtime
from epp.bench.records import RunResult
from epp.bench.workload import BenchRequest
from epp.stack.stack import Stack, StackConfig

MODEL = "sim-model"


@dataclass(frozen=True)
class RealtimeCluster:
    endpoints: int
    profile: str
    time_scale: float = 1.0
    scrape_interval: float = 0.05  # wall seconds


def stack_config(
    cluster: RealtimeCluster, config: Path | None, run_dir: Path, envoy_round_robin: bool
) -> StackConfig:
    epp_args = [f"--refresh-metrics-interval={cluster.scrape_interval * 1000:g}ms"]
    if config is not None:
        epp_args.append(f"--config-file={config.resolve()}")
    return StackConfig(
        run_dir=run_dir,
        sims=cluster.endpoints,
        model=MODEL,
        sim_args=[f"--profile={cluster.profile}", f"--time-scale={cluster.time_scale:g}"],
        epp_args=epp_args,
        baseline_listener=envoy_round_robin,
    )


async def run_stack(
    requests: Sequence[BenchRequest],
    config: Path | None,
    cluster: RealtimeCluster,
    run_dir: Path,
    envoy_round_robin: bool = False,
) -> RunResult:
    async with Stack(stack_config(cluster, config, run_dir, envoy_round_robin)) as stack:
        url = stack.baseline_url if envoy_round_robin else stack.gateway_url
        names = [sim.name for sim in stack.sims]
        return await run_realtime(requests, url, MODEL, names, cluster.time_scale)
