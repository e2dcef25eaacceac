"""`epp bench replicas`: N active-active EPP replicas in virtual time, each getting a share of the
requests (round robin, as Envoy's default load balancing spreads ext_proc streams over the EPP
cluster's hosts), over one simulated cluster.

Every replica is a full director built from the same config over its own datastore (its own
in-flight counts and prefix index), exactly as N `epp serve` processes would be. What they share
is chosen by `sync`:

- `none`: naive independent replicas, each learning only from its own decisions;
- `routes`: every routed request's prefix blocks reach the other replicas' indexes after `delay`
  (the Redis pub/sub round trip of `RedisReplicaSync`);
- `load`: every `interval` each replica's own in-flight counts reach the others after `delay`
  (the per-replica Redis keys);
- `full`: both, which is what `epp serve --replica-sync` does.

Sharing goes through `epp.replicas.ReplicaState`, the same code the Redis transport drives."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from epp.bench.records import RunResult
from epp.bench.suite import virtual_cluster
from epp.bench.summary import Summary, summarize
from epp.bench.virtual import (
    KVEventSink,
    VirtualCluster,
    VirtualRun,
    _FixedPoolDirector,
    endpoint_specs,
)
from epp.bench.workload import BenchRequest, generate, load_spec
from epp.config.build import build_director
from epp.config.loader import load_config_file
from epp.config.model import PickerConfig
from epp.datastore import Datastore
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.plugins.token_producer import TokenProducer
from epp.replicas import ReplicaLoad, ReplicaState, RouteMessage
from epp.requestcontrol import Director

Sync = Literal["none", "routes", "load", "full"]
SYNC_MODES: tuple[Sync, ...] = ("none", "routes", "load", "full")
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    replicas: int = 2
    sync: Sync = "full"
    delay: float = 0.002  # seconds from one replica's publish to the others' apply
    interval: float = 0.1  # seconds between load exchanges (--replica-load-interval)


class ReplicatedVirtualRun(VirtualRun):
    def __init__(
        self,
        requests: Sequence[BenchRequest],
        config: PickerConfig,
        cluster: VirtualCluster,
        settings: ReplicaSettings,
    ) -> None:
        super().__init__(requests, config, cluster)
        self.settings = settings
        self.directors: list[Director] = [self.director]
        self.datastores = [self.datastore]
        self.states: list[ReplicaState] = []
        plugin_sets: list[list[object]] = [list(self.plugins)]
        for index in range(1, settings.replicas):
            datastore = Datastore()
            datastore.replace_all(endpoint_specs(cluster))
            rng = random.Random(cluster.seed * 1000 + index)
            context = PluginContext(EppMetrics(), rng, clock=lambda: self.now)
            director, components = build_director(
                config, datastore, context, director_type=_FixedPoolDirector
            )
            self.directors.append(director)
            self.datastores.append(datastore)
            plugin_sets.append(list(components.plugins.values()))
            self.sinks.extend(p for p in components.plugins.values() if isinstance(p, KVEventSink))
            for plugin in components.plugins.values():
                if isinstance(plugin, TokenProducer):  # as VirtualRun does for the first replica
                    plugin.sync_tokenizer = self.prompt_token_ids
        for index, (datastore, plugins) in enumerate(zip(self.datastores, plugin_sets, strict=True)):
            state = ReplicaState(f"r{index}", datastore, plugins)
            if settings.sync in ("routes", "full"):
                state.on_route = self._publish_route
            self.states.append(state)
        self._turn = 0

    def run(self) -> RunResult:
        if self.settings.sync in ("load", "full") and self.settings.replicas > 1:
            self._push(self.settings.interval, self._exchange_load, None)
        return super().run()

    def _arrive(self, now: float, request: BenchRequest) -> None:
        self.director = self.directors[self._turn]
        self._turn = (self._turn + 1) % len(self.directors)
        super()._arrive(now, request)

    def _scrape(self, now: float, _: None) -> None:
        super()._scrape(now, None)
        primary = {e.name: e.metrics for e in self.datastore.endpoints()}
        for datastore in self.datastores[1:]:
            for endpoint in datastore.endpoints():
                endpoint.metrics = primary[endpoint.name]

    def _publish_route(self, message: RouteMessage) -> None:
        self._push(self.now + self.settings.delay, self._deliver_route, message)

    def _deliver_route(self, now: float, message: RouteMessage) -> None:
        for state in self.states:
            state.apply_route(message)  # the sender skips its own

    def _exchange_load(self, now: float, _: None) -> None:
        snapshot = [state.local_load() for state in self.states]
        self._push(now + self.settings.delay, self._apply_load, snapshot)
        if self._open:
            self._push(now + self.settings.interval, self._exchange_load, None)

    def _apply_load(self, now: float, snapshot: list[ReplicaLoad]) -> None:
        for index, state in enumerate(self.states):
            state.apply_peer_load(load for other, load in enumerate(snapshot) if other != index)


def run_replicated(
    requests: Sequence[BenchRequest], config: PickerConfig, cluster: VirtualCluster, settings: ReplicaSettings
) -> Summary:
    return summarize(ReplicatedVirtualRun(requests, config, cluster, settings).run())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", type=Path, default=ROOT / "bench/workloads/shared-prefix.yaml")
    parser.add_argument("--config", type=Path, default=ROOT / "bench/configs/ours-approximate.yaml")
    parser.add_argument("--rate", type=float, action="append", default=[], help="requests/s (repeatable)")
    parser.add_argument("--replicas", type=int, action="append", default=[], help="default 2 and 4")
    parser.add_argument("--sync", choices=SYNC_MODES, action="append", default=[], help="default none, full")
    parser.add_argument("--delay", type=float, default=0.002, help="sync latency, seconds (default 0.002)")
    parser.add_argument("--interval", type=float, default=0.1, help="load exchange period (default 0.1)")
    parser.add_argument("--requests", type=int, default=0, help="first N requests only (0 = all)")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    """Prints a markdown table: one replica, then every (replicas, sync) pair, at each rate."""
    spec = load_spec(args.workload)
    config = load_config_file(args.config)
    cluster = virtual_cluster(spec, 0.05, args.seed)
    print("| rate | replicas | sync | hit rate | Δ hit (pts) | TTFT p90 s | Δ p90 | TTFT p50 s | imbalance |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for rate in args.rate or [10.0]:
        requests = generate(spec, rate)
        if args.requests:
            requests = [r for r in requests if r.index < args.requests]
        base = run_replicated(requests, config, cluster, ReplicaSettings(1, "none"))
        print(_row(rate, 1, "—", base, base), flush=True)
        for replicas in args.replicas or [2, 4]:
            for sync in args.sync or ["none", "full"]:
                settings = ReplicaSettings(replicas, sync, args.delay, args.interval)
                print(
                    _row(rate, replicas, sync, run_replicated(requests, config, cluster, settings), base),
                    flush=True,
                )
    sys.stdout.flush()
    return 0


def _row(rate: float, replicas: int, sync: str, s: Summary, base: Summary) -> str:
    hit_delta = (s.hit_rate - base.hit_rate) * 100
    ttft_delta = (s.ttft_p90 / base.ttft_p90 - 1) * 100 if base.ttft_p90 else 0.0
    return (
        f"| {rate:g} | {replicas} | {sync} | {s.hit_rate:.1%} | {hit_delta:+.1f} | {s.ttft_p90:.3f} | "
        f"{ttft_delta:+.1f} % | {s.ttft_p50:.3f} | {s.imbalance:.2f} |"
    )
