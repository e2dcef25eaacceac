"""A benchmark suite: which routing policies run on which workloads, and the runs that produce.

`bench/suite.yaml` lists policies (an EndpointPickerConfig each, or GIE's built-in default) and
workloads; every (workload, rate, policy) triple is one run on a fresh cluster, so no policy
inherits another's cache, once per routing seed and workload seed asked for (a knee's figures move
with both, so the report can average them). Virtual-time runs are independent processes' work and
spread over `jobs` worker processes; real-time runs start their own Envoy + EPP + simulators one at
a time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from epp.bench.realtime import RealtimeCluster, RealtimePolicy, run_stack
from epp.bench.records import RunResult
from epp.bench.summary import Summary, summarize
from epp.bench.virtual import VirtualCluster, run_virtual
from epp.bench.workload import WorkloadSpec, generate, load_spec
from epp.config.loader import load_config, load_config_file
from epp.config.model import PickerConfig
from epp.sim.profiles import get_profile

Engine = Literal["virtual", "realtime"]
BUILTIN = "builtin"


class PolicySpec(BaseModel):
    """A routing policy. `config` is relative to the suite file; `builtin` is what `epp serve`
    runs without a config (GIE's default profile). `envoy_round_robin` makes real-time runs use
    Envoy's own round-robin listener instead of the EPP (virtual time then uses `config`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    config: str = BUILTIN
    realtime_config: str = Field(default="", description="real time only, when it needs other settings")
    kv_events_endpoint: str = Field(default="", description="real time: simulators publish KV events here")
    label: str = ""
    envoy_round_robin: bool = False


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: list[PolicySpec] = Field(min_length=1)
    workloads: list[str] = Field(min_length=1)
    slo_ttft_p90: float = Field(default=2.0, gt=0, description="seconds; throughput is compared at this SLO")
    headline: str = Field(default="", description="the policy the goals are checked for")
    pressure_workloads: list[str] = Field(
        default=[], description="where the headline must beat GIE's default; elsewhere match it"
    )


@dataclass(frozen=True)
class Suite:
    spec: SuiteSpec
    root: Path

    @classmethod
    def load(cls, path: Path) -> Suite:
        return cls(SuiteSpec.model_validate(yaml.safe_load(path.read_text())), path.parent)

    def policy(self, name: str) -> PolicySpec:
        for policy in self.spec.policies:
            if policy.name == name:
                return policy
        raise KeyError(f"no policy {name!r}; known: {', '.join(p.name for p in self.spec.policies)}")

    def config_path(self, policy: PolicySpec, realtime: bool = False) -> Path | None:
        config = policy.realtime_config if realtime and policy.realtime_config else policy.config
        return None if config == BUILTIN else self.root / config

    def realtime_policy(self, policy: PolicySpec) -> RealtimePolicy:
        return RealtimePolicy(
            self.config_path(policy, realtime=True), policy.kv_events_endpoint, policy.envoy_round_robin
        )

    def picker_config(self, policy: PolicySpec) -> PickerConfig:
        path = self.config_path(policy)
        return load_config() if path is None else load_config_file(path)

    def workloads(self) -> list[WorkloadSpec]:
        return [load_spec(self.root / path) for path in self.spec.workloads]

    def workload_seeds(self) -> dict[str, int]:
        """Each workload's own seed, as its file gives it."""
        return {workload.name: workload.seed for workload in self.workloads()}


class SuiteRefused(ValueError):
    """Runs the suite cannot make as asked (the command line's mistake, not a failed run)."""


@dataclass(frozen=True)
class RunKey:
    """One run: `seed` is the routing plugins' random seed (virtual time), `workload_seed` the
    seed the workload's draws used (None only for a run from a results file older than seeds whose
    workload the loading suite does not know)."""

    workload: str
    policy: str
    rate: float
    engine: Engine
    seed: int = 0
    workload_seed: int | None = None


@dataclass
class RunOutcome:
    key: RunKey
    summary: Summary
    wall_seconds: float
    served: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.key.workload,
            "policy": self.key.policy,
            "rate": self.key.rate,
            "engine": self.key.engine,
            "seed": self.key.seed,
            "workload_seed": self.key.workload_seed,
            "wall_seconds": round(self.wall_seconds, 3),
            "summary": self.summary.as_dict(),
            "served": self.served,
        }

    @classmethod
    def from_dict(cls, data: object, workload_seeds: Mapping[str, int] | None = None) -> RunOutcome:
        """`workload_seeds` (each workload's file seed) dates a run recorded before seeds were: it
        ran with routing seed 0 and its workload file's seed. RunFormatError names what is wrong."""
        if not isinstance(data, dict):
            raise RunFormatError(f"an object expected, got {data!r:.60}")
        workload = _field(data, "workload", str, "a string")
        policy = _field(data, "policy", str, "a string")
        rate = float(_field(data, "rate", (int, float), "a number"))
        workload_seed = data.get("workload_seed")
        if workload_seed is None:
            workload_seed = (workload_seeds or {}).get(workload)
        else:
            workload_seed = _field(data, "workload_seed", int, "an integer")
        engine = _field(data, "engine", str, "a string")
        if engine not in ("virtual", "realtime"):
            raise RunFormatError(f"'engine' is neither 'virtual' nor 'realtime': {engine!r:.60}")
        key = RunKey(
            workload,
            policy,
            rate,
            engine,
            _field(data, "seed", int, "an integer") if "seed" in data else 0,
            workload_seed,
        )
        figures = _field(data, "summary", dict, "an object")
        try:
            numbers = {f.name: _field(figures, f.name, (int, float), "a number") for f in fields(Summary)}
        except RunFormatError as exc:
            raise RunFormatError(f"summary: {exc}") from None
        summary = Summary(**numbers)
        served = _field(data, "served", dict, "an object") if "served" in data else {}
        return cls(key, summary, float(_field(data, "wall_seconds", (int, float), "a number")), dict(served))


class RunFormatError(ValueError):
    """A results file's entry that is not a run; the message names the field at fault."""


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if name not in data:
        raise RunFormatError(f"{name!r} missing")
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RunFormatError(f"{name!r} is not {what}: {value!r:.60}")
    return value


def outcome(key: RunKey, result: RunResult) -> RunOutcome:
    served: dict[str, int] = dict.fromkeys(result.endpoints, 0)
    for record in result.records:
        if record.ok and record.endpoint in served:
            served[record.endpoint] += 1
    return RunOutcome(key, summarize(result), result.wall_seconds, served)


def virtual_cluster(workload: WorkloadSpec, scrape_interval: float, seed: int) -> VirtualCluster:
    profile = get_profile(workload.cluster.profile).with_overrides(
        num_gpu_blocks=workload.cluster.num_gpu_blocks
    )
    return VirtualCluster(
        workload.cluster.endpoints, profile, scrape_interval=scrape_interval, seed=seed, churn=workload.churn
    )


def realtime_cluster(workload: WorkloadSpec, time_scale: float, scrape_interval: float) -> RealtimeCluster:
    """The workload's cluster as real `epp sim` processes, its KV-cache size included (without it
    the simulators take the profile's, and a cache-pressure workload has no pressure)."""
    return RealtimeCluster(
        endpoints=workload.cluster.endpoints,
        profile=workload.cluster.profile,
        num_gpu_blocks=workload.cluster.num_gpu_blocks,
        time_scale=time_scale,
        scrape_interval=scrape_interval * time_scale,
    )


@dataclass(frozen=True)
class _VirtualJob:
    key: RunKey
    workload: WorkloadSpec
    config: PickerConfig
    scrape_interval: float


def _run_virtual_job(job: _VirtualJob) -> RunOutcome:
    requests = generate(job.workload, job.key.rate)
    cluster = virtual_cluster(job.workload, job.scrape_interval, job.key.seed)
    return outcome(job.key, run_virtual(requests, job.config, cluster))


@dataclass
class SuiteRunner:
    """Runs the selected part of a suite; `progress` hears about every finished run."""

    suite: Suite
    engine: Engine = "virtual"
    workloads: Sequence[str] = ()
    policies: Sequence[str] = ()
    rates: Sequence[float] = ()
    jobs: int = 1
    seeds: Sequence[int] = (0,)
    workload_seeds: Sequence[int | None] = (None,)
    """None: the workload file's own seed."""
    scrape_interval: float = 0.05
    time_scale: float = 1.0
    run_dir: Path = Path("run/bench")
    progress: Callable[[RunOutcome], None] = lambda _: None

    def selected(self) -> Iterator[tuple[WorkloadSpec, PolicySpec, float]]:
        """Every selected (workload, policy, rate), the workload once per workload seed."""
        for spec in self.suite.workloads():
            if self.workloads and spec.name not in self.workloads:
                continue
            rates = [r for r in spec.load.rates if not self.rates or r in self.rates]
            for workload in self.reseeded(spec):
                for policy in self.suite.spec.policies:
                    if self.policies and policy.name not in self.policies:
                        continue
                    for rate in rates:
                        yield workload, policy, rate

    def reseeded(self, spec: WorkloadSpec) -> list[WorkloadSpec]:
        """`spec` with each workload seed asked for in place of its own, each seed once."""
        seeds = dict.fromkeys(spec.seed if seed is None else seed for seed in self.workload_seeds)
        return [spec if seed == spec.seed else spec.model_copy(update={"seed": seed}) for seed in seeds]

    def check_selection(self) -> None:
        """SuiteRefused for a --workload or --policy the suite lacks, or a selection of no run."""
        specs = self.suite.workloads()
        for flag, asked, known in (
            ("workload", self.workloads, [w.name for w in specs]),
            ("policy", self.policies, [p.name for p in self.suite.spec.policies]),
        ):
            for name in dict.fromkeys(asked):
                if name not in known:
                    has = ", ".join(known)
                    raise SuiteRefused(f"--{flag} {name}: the suite has no such {flag} (it has {has})")
        if next(self.selected(), None) is None:
            lists = "; ".join(
                f"{w.name}: {', '.join(f'{r:g}' for r in w.load.rates)}"
                for w in specs
                if not self.workloads or w.name in self.workloads
            )
            rates = " ".join(f"--rate {r:g}" for r in self.rates)
            raise SuiteRefused(f"nothing to run: no selected workload lists {rates} ({lists})")

    def run(self) -> list[RunOutcome]:
        self.check_selection()
        if self.engine == "virtual":
            return self._run_virtual()
        if set(self.seeds) != {0}:
            raise SuiteRefused("routing seeds other than 0 (--seed) apply to virtual time only")
        named = [w for w in self.suite.workloads() if w.name in self.workloads]
        churning = [w.name for w in named if w.churn is not None]
        if churning:
            raise SuiteRefused(f"{', '.join(churning)}: workloads with churn run in virtual time only")
        return asyncio.run(self._run_realtime())

    def _run_virtual(self) -> list[RunOutcome]:
        jobs = [
            _VirtualJob(
                RunKey(workload.name, policy.name, rate, "virtual", seed, workload.seed),
                workload,
                self.suite.picker_config(policy),
                self.scrape_interval,
            )
            for workload, policy, rate in self.selected()
            for seed in dict.fromkeys(self.seeds)
        ]
        outcomes: list[RunOutcome] = []
        if self.jobs <= 1:
            for job in jobs:
                outcomes.append(_run_virtual_job(job))
                self.progress(outcomes[-1])
            return outcomes
        with multiprocessing.get_context("fork").Pool(self.jobs) as pool:
            for result in pool.imap(_run_virtual_job, jobs):
                outcomes.append(result)
                self.progress(result)
        return outcomes

    async def _run_realtime(self) -> list[RunOutcome]:
        outcomes = []
        for workload, policy, rate in self.selected():
            if workload.churn is not None:
                continue  # virtual time only; named explicitly, `run` refused it
            key = RunKey(workload.name, policy.name, rate, "realtime", 0, workload.seed)
            cluster = realtime_cluster(workload, self.time_scale, self.scrape_interval)
            run_dir = self.run_dir / f"{workload.name}-{policy.name}-{rate:g}-{int(time.time())}"
            realtime = self.suite.realtime_policy(policy)
            result = await run_stack(generate(workload, rate), realtime, cluster, run_dir)
            outcomes.append(outcome(key, result))
            self.progress(outcomes[-1])
        return outcomes
