"""One real-time run: a fresh Envoy + EPP + simulators stack, the load generator, the teardown.

The EPP gets the policy's EndpointPickerConfig; the Envoy round-robin policy instead sends the load
to the stack's second Envoy listener, which has no ext_proc and balances over the same simulators.
A policy that follows the engines' KV events has the simulators publish them where it listens.
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
class RealtimePolicy:
    """What a real-time run needs of a policy: its config file (None: the built-in default), where
    its KV-event subscriber listens, and whether it is plain Envoy round robin instead of the EPP."""

    config: Path | None
    kv_events_endpoint: str = ""
    envoy_round_robin: bool = False
    epp_args: tuple[str, ...] = ()  # more `epp serve` flags (e.g. --objectives-file)


@dataclass(frozen=True)
class RealtimeCluster:
    endpoints: int
    profile: str
    time_scale: float = 1.0
    scrape_interval: float = 0.05  # wall seconds
    num_gpu_blocks: int | None = None  # the workload's KV-cache override
    scheduling_policy: str = "fcfs"  # the simulators' vLLM --scheduling-policy


def stack_config(policy: RealtimePolicy, cluster: RealtimeCluster, run_dir: Path) -> StackConfig:
    epp_args = [f"--refresh-metrics-interval={cluster.scrape_interval * 1000:g}ms", *policy.epp_args]
    template = ""
    if policy.config is not None:
        text = policy.config.read_text()
        if "${SIM_URL}" in text:  # e.g. token-producer's render API: known once the sims run
            template = text
        else:
            epp_args.append(f"--config-file={policy.config.resolve()}")
    sim_args = [f"--profile={cluster.profile}", f"--time-scale={cluster.time_scale:g}"]
    if cluster.num_gpu_blocks is not None:
        sim_args.append(f"--num-gpu-blocks={cluster.num_gpu_blocks}")
    if cluster.scheduling_policy != "fcfs":
        sim_args.append(f"--scheduling-policy={cluster.scheduling_policy}")
    if policy.kv_events_endpoint:
        sim_args.append(f"--kv-events-endpoint={policy.kv_events_endpoint}")
    return StackConfig(
        run_dir=run_dir,
        sims=cluster.endpoints,
        model=MODEL,
        sim_args=sim_args,
        epp_args=epp_args,
        baseline_listener=policy.envoy_round_robin,
        epp_config_template=template,
    )


async def run_stack(
    requests: Sequence[BenchRequest], policy: RealtimePolicy, cluster: RealtimeCluster, run_dir: Path
) -> RunResult:
    """Start a stack serving `policy`, send `requests`, stop it."""
    async with Stack(stack_config(policy, cluster, run_dir)) as stack:
        url = stack.baseline_url if policy.envoy_round_robin else stack.gateway_url
        names = [sim.name for sim in stack.sims]
        return await run_realtime(requests, url, MODEL, names, cluster.time_scale)
