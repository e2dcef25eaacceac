"""`epp bench fairness`: overload that one tenant, or one priority, causes, and what flow control
does about it, side by side in one run (issue 14's measured goals).

Two scenarios on the shared-prefix workload's cluster and prompt shapes, with `--output-len`
output tokens (default 200: a request then lasts seconds, not half a minute, so a run of a few
minutes reaches a steady state many request lifetimes long). `--capacity` is the cluster's
request rate at the suite's SLO for that shape.

- tenants: a well-behaved tenant sends its share (half the capacity), another five times its
  share; each tenant has its own prompt groups. Rows: the well-behaved tenant alone; both without
  flow control; both with flow control under each fairness policy; pods reserved for the
  well-behaved tenant, statically and sized to its demand.
- priority: a critical objective (band 1) at half the capacity, and a sheddable one (band -1)
  flooding at three times the capacity. Rows: critical alone; both without flow control (GIE's
  legacy admission: sheddable requests get 429 while the pool is saturated); both with flow
  control (bands dispatched highest first); the remedies measured beside them, down to pods
  reserved for the critical band, statically and sized to its demand.

`--burst ON OFF` has the protected stream (the first) send only in the first ON seconds of every
ON + OFF, the flood all the time: where a static reservation idles.

Requests go through the real director and flow controller (in virtual time, on a model-clock
asyncio loop; `--engine realtime`: through Envoy and `epp serve`). Latency percentiles and
throughput are taken over the steady window from `--warmup` to the end of arrivals: TTFT of the
requests sent in it, output tokens produced in it (each request's tokens spread evenly from its
first token to its last). Jain's index is over each tenant's throughput divided by its max-min
fair share of what was served in the window (so 1.0 when every tenant got what fairness allows).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from epp.bench.realtime import RealtimeCluster, RealtimePolicy, run_stack
from epp.bench.records import RunResult
from epp.bench.report import publish, table
from epp.bench.suite import virtual_cluster
from epp.bench.summary import percentile
from epp.bench.virtual import VirtualRun
from epp.bench.workload import BenchRequest, SharedPrefix, WorkloadSpec, generate, load_spec
from epp.config.loader import load_config
from epp.config.objectives import load_objectives_file

WELL_BEHAVED, NOISY = "tenant-a", "tenant-b"
CRITICAL, SHEDDABLE = "critical", "sheddable"
FAIRNESS_POLICIES = (
    "global-strict-fairness-policy",
    "round-robin-fairness-policy",
    "least-tokens-served-fairness-policy",
)
ENGINES = {"virtual": "virtual time", "realtime": "real time, through Envoy and epp serve"}
PRIORITY_FIELD = "vllm-priority-field"
SOFT_CEILING = "soft-reflective-ceiling-policy"
RESERVED_CRITICAL, RESERVED_TENANT = "reserved-critical", "reserved-tenant"
DEMAND_CRITICAL, DEMAND_TENANT = "demand-reserved-critical", "demand-reserved-tenant"
TIER_LABEL = "inference-tier"
# Rows whose config is a file (`--ROW-config`, default bench/configs/ROW.yaml), with its help.
FILE_ROWS = {
    RESERVED_CRITICAL: "the priority scenario's row with pods reserved for the critical objective",
    RESERVED_TENANT: "the tenants scenario's row with pods reserved for the well-behaved tenant",
    DEMAND_CRITICAL: (
        "the priority scenario's row with a reservation sized to the critical objective's demand"
    ),
    DEMAND_TENANT: "the tenants scenario's row with a reservation sized to the well-behaved tenant's demand",
}
DEMAND_LABEL = "pods reserved by demand (demand-sized-reservation)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", type=Path, default=Path("bench/workloads/shared-prefix.yaml"))
    parser.add_argument("--baseline-config", type=Path, default=Path("bench/configs/ours.yaml"))
    parser.add_argument(
        "--config", type=Path, default=Path("bench/configs/flow-control.yaml"), help="flow control on"
    )
    parser.add_argument(
        "--max-concurrency", type=int, help="override the flow-control config's concurrency-detector limit"
    )
    parser.add_argument(
        "--objectives", type=Path, default=Path("bench/configs/objectives.yaml"), help="InferenceObjectives"
    )
    parser.add_argument("--output-len", type=int, default=200)
    parser.add_argument("--capacity", type=float, default=28.0, help="cluster req/s at the SLO")
    parser.add_argument("--seconds", type=float, default=150.0, help="arrivals span (model seconds)")
    parser.add_argument("--warmup", type=float, default=30.0, help="model seconds left out of figures")
    parser.add_argument("--scenario", choices=("tenants", "priority"), action="append", default=[])
    parser.add_argument("--engine", choices=("virtual", "realtime"), default="virtual")
    parser.add_argument("--time-scale", type=float, default=1.0, help="real time: simulators' time scale")
    parser.add_argument("--endpoints", type=int, help="override the workload's cluster size")
    parser.add_argument(
        "--groups-per-share",
        type=int,
        default=25,
        help="prompt groups per share of the offered rate (fewer for a smaller cluster's KV cache)",
    )
    for row, help_text in FILE_ROWS.items():
        parser.add_argument(
            f"--{row}-config", type=Path, default=Path(f"bench/configs/{row}.yaml"), help=help_text
        )
    parser.add_argument(
        "--burst",
        nargs=2,
        type=float,
        metavar=("ON", "OFF"),
        help="the protected stream sends only ON model seconds of every ON + OFF, from the start",
    )
    parser.add_argument(
        "--reserved-tenant", type=int, default=5, help="pods labelled inference-tier=reserved for tenant-a"
    )
    parser.add_argument(
        "--reserved-critical", type=int, default=6, help="pods labelled inference-tier=reserved for critical"
    )
    parser.add_argument(
        "--row",
        action="append",
        default=[],
        help="run only the rows whose label contains this (and the first, the reference); repeatable",
    )
    parser.add_argument("--doc", type=Path, help="also write the tables into this document's block")


@dataclass(frozen=True)
class Stream:
    """One tenant or objective: its share of the offered rate and how its requests are tagged."""

    name: str
    rate: float
    tenant: str = ""  # the fairness id its requests carry
    objective: str = ""  # the InferenceObjective its requests name

    def tag(self, request: BenchRequest) -> BenchRequest:
        return dataclasses.replace(request, tenant=self.tenant, objective=self.objective, group=self.name)


@dataclass(frozen=True)
class Row:
    label: str
    config: str  # "baseline", a fairness policy's type name (flow control on), or a variant (Bench)
    streams: tuple[str, ...]  # which streams send in this run
    scheduling_policy: str = "fcfs"  # the servers' vLLM --scheduling-policy
    reserved: int = 0  # label this many pods inference-tier=reserved, the rest shared


@dataclass(frozen=True)
class Measured:
    ttft_p50: float
    ttft_p90: float
    queued_p90: float  # of the TTFT, the wait in the EPP (virtual time only; NaN in real time)
    served_p90: float  # of the TTFT, the time from routing to the first token (virtual time only)
    tokens_per_s: float
    errors: dict[str, int]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        spec = load_spec(args.workload)
        data = spec.data
        if not isinstance(data, SharedPrefix):
            raise SystemExit(f"{args.workload}: needs shared_prefix data (its groups become tenants)")
        self.data = data
        if args.endpoints:
            cluster = spec.cluster.model_copy(update={"endpoints": args.endpoints})
            spec = spec.model_copy(update={"cluster": cluster})
        self.spec = spec
        self.objectives = load_objectives_file(args.objectives)
        missing = {CRITICAL, SHEDDABLE} - set(self.objectives)
        if missing:
            raise SystemExit(f"{args.objectives}: no objective named {', '.join(sorted(missing))}")
        self.configs: dict[str, str] = {"baseline": args.baseline_config.read_text()}
        document = yaml.safe_load(args.config.read_text())
        if args.max_concurrency is not None:
            for plugin in document["plugins"]:
                if plugin["type"] == "concurrency-detector":
                    plugin.setdefault("parameters", {})["maxConcurrency"] = args.max_concurrency
        for policy in FAIRNESS_POLICIES:
            document["flowControl"]["defaultPriorityBand"]["fairnessPolicyRef"] = policy
            self.configs[policy] = yaml.safe_dump(document, sort_keys=False)
        # the priority scenario's variants, on the last policy's config
        self.configs["baseline+" + PRIORITY_FIELD] = _with_plugin(self.configs["baseline"], PRIORITY_FIELD)
        self.configs["bands+" + PRIORITY_FIELD] = _with_plugin(
            self.configs[FAIRNESS_POLICIES[-1]], PRIORITY_FIELD
        )
        document["flowControl"]["usageLimitPolicyPluginRef"] = SOFT_CEILING
        self.configs[SOFT_CEILING] = yaml.safe_dump(document, sort_keys=False)
        self.configs[SOFT_CEILING + "+" + PRIORITY_FIELD] = _with_plugin(
            self.configs[SOFT_CEILING], PRIORITY_FIELD
        )
        for row in FILE_ROWS:
            self.configs[row] = getattr(args, row.replace("-", "_") + "_config").read_text()
        if args.burst and not (0 < args.burst[0] < math.inf and 0 <= args.burst[1] < math.inf):
            raise SystemExit("--burst: ON must be positive and OFF not negative, both finite")

    def requests(self, streams: Sequence[Stream]) -> list[BenchRequest]:
        """Every stream's requests, tagged, in one Poisson process split by prompt group: stream i
        owns the groups g with g % units == its unit, in proportion to its rate."""
        base = min(s.rate for s in streams)
        units = [round(s.rate / base) for s in streams]
        total_units = sum(units)
        owner: list[Stream] = [s for s, n in zip(streams, units, strict=True) for _ in range(n)]
        rate = sum(s.rate for s in streams)
        data = self.data.model_copy(
            update={
                "num_groups": self.args.groups_per_share * total_units,
                "output_len": self.args.output_len,
                "requests": round(rate * self.args.seconds),
            }
        )
        spec: WorkloadSpec = self.spec.model_copy(update={"data": data})
        tagged = []
        for request in generate(spec, rate):
            stream = owner[int(request.group[1:]) % total_units]
            if stream is streams[0] and not self.sends(request.arrival):
                continue
            tagged.append(stream.tag(request))
        return tagged

    def sends(self, at: float) -> bool:
        """Whether the protected stream sends at model time `at` (always, unless --burst)."""
        if not self.args.burst:
            return True
        on, off = self.args.burst
        return at % (on + off) < on

    def duty(self) -> float:
        """The protected stream's share of the time it sends (1 unless --burst)."""
        return self.args.burst[0] / sum(self.args.burst) if self.args.burst else 1.0

    def run(self, row: Row, requests: list[BenchRequest]) -> tuple[RunResult, Sequence[float]]:
        """The run's records, and when the EPP routed each request (NaN where not known)."""
        kept = [dataclasses.replace(r, index=i) for i, r in enumerate(requests)]
        config, scheduling_policy = row.config, row.scheduling_policy
        if self.args.engine == "virtual":
            cluster = dataclasses.replace(
                virtual_cluster(self.spec, 0.05, 0), scheduling_policy=scheduling_policy
            )
            run = VirtualRun(kept, load_config(self.configs[config]), cluster, self.objectives)
            if row.reserved:
                for index, endpoint in enumerate(run.endpoints):
                    tier = "reserved" if index < row.reserved else "shared"
                    run.datastore.upsert(dataclasses.replace(endpoint.spec, labels={TIER_LABEL: tier}))
            return run.run(), run.routed_at
        return asyncio.run(self._run_realtime(config, kept, scheduling_policy)), [math.nan] * len(kept)

    async def _run_realtime(
        self, config: str, requests: list[BenchRequest], scheduling_policy: str
    ) -> RunResult:
        spec, scale = self.spec.cluster, self.args.time_scale
        cluster = RealtimeCluster(
            spec.endpoints, spec.profile, scale, 0.05 * scale, spec.num_gpu_blocks, scheduling_policy
        )
        with tempfile.TemporaryDirectory(prefix="epp-fairness-") as directory:
            run_dir = Path(directory)
            config_file = run_dir / "config.yaml"
            config_file.write_text(self.configs[config])
            objectives = f"--objectives-file={self.args.objectives.resolve()}"
            policy = RealtimePolicy(config_file, epp_args=(objectives,))
            return await run_stack(requests, policy, cluster, run_dir)

    def measure(self, result: RunResult, routed: Sequence[float], stream: str) -> Measured:
        start, end = self.args.warmup, self.args.seconds
        records = [r for r in result.records if r.group == stream]
        steady = [r for r in records if r.ok and r.ttft is not None and start <= r.sent <= end]
        ttft = [r.ttft for r in steady if r.ttft is not None]
        known = [r for r in steady if not math.isnan(routed[r.index])]
        queued = [routed[r.index] - r.sent for r in known]
        served = [r.first_token - routed[r.index] for r in known if r.first_token is not None]
        tokens = 0.0
        for r in records:
            if not r.ok or r.first_token is None or r.done is None:
                continue
            span = r.done - r.first_token
            overlap = min(r.done, end) - max(r.first_token, start)
            if span <= 0:
                tokens += r.output_tokens if start <= r.done <= end else 0
            elif overlap > 0:
                tokens += r.output_tokens * overlap / span
        errors: dict[str, int] = {}
        for r in records:
            if r.error is not None:
                errors[r.error] = errors.get(r.error, 0) + 1
        return Measured(
            percentile(ttft, 50),
            percentile(ttft, 90),
            percentile(queued, 90),
            percentile(served, 90),
            tokens / (end - start),
            errors,
        )


def _with_plugin(config: str, plugin: str) -> str:
    document = yaml.safe_load(config)
    document["plugins"].append({"type": plugin})
    return yaml.safe_dump(document, sort_keys=False)


def jain(throughputs: Sequence[float], demands: Sequence[float]) -> float:
    """Jain's index of the throughputs, each relative to its max-min fair share of their total."""
    shares = max_min_shares(sum(throughputs), demands)
    x = [t / s for t, s in zip(throughputs, shares, strict=True) if s > 0]
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x)) if x else float("nan")


def max_min_shares(capacity: float, demands: Sequence[float]) -> list[float]:
    """Water-filling: each demand gets an equal part of what is left, or all it asks if less."""
    shares = [0.0] * len(demands)
    left = sorted(range(len(demands)), key=lambda i: demands[i])
    remaining = capacity
    while left:
        part = remaining / len(left)
        i = left[0]
        if demands[i] <= part:
            shares[i] = demands[i]
            remaining -= demands[i]
            left.pop(0)
            continue
        for j in left:
            shares[j] = part
        break
    return shares


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _errors(measured: Mapping[str, Measured]) -> str:
    parts = [
        f"{name}: {count} x {code}"
        for name, m in measured.items()
        for code, count in sorted(m.errors.items())
    ]
    return ", ".join(parts) or "none"


def tenants(bench: Bench) -> str:
    capacity = bench.args.capacity
    streams = (
        Stream(WELL_BEHAVED, capacity / 2, tenant=WELL_BEHAVED),
        Stream(NOISY, 5 * capacity / 2, tenant=NOISY),
    )
    rows = [
        Row(f"{WELL_BEHAVED} alone, no flow control", "baseline", (WELL_BEHAVED,)),
        Row("both, no flow control", "baseline", (WELL_BEHAVED, NOISY)),
        *(Row(f"both, flow control, {p}", p, (WELL_BEHAVED, NOISY)) for p in FAIRNESS_POLICIES),
        Row(
            f"both, no flow control, {bench.args.reserved_tenant} of {bench.spec.cluster.endpoints} pods "
            f"reserved for {WELL_BEHAVED}",
            RESERVED_TENANT,
            (WELL_BEHAVED, NOISY),
            reserved=bench.args.reserved_tenant,
        ),
        Row(
            f"both, no flow control, {DEMAND_LABEL} for {WELL_BEHAVED}", DEMAND_TENANT, (WELL_BEHAVED, NOISY)
        ),
    ]
    return side_by_side(bench, streams, rows, with_jain=True)


def priority(bench: Bench) -> str:
    capacity = bench.args.capacity
    streams = (
        Stream(CRITICAL, capacity / 2, objective=CRITICAL),
        Stream(SHEDDABLE, 3 * capacity, objective=SHEDDABLE),
    )
    policy = FAIRNESS_POLICIES[-1]
    both = (CRITICAL, SHEDDABLE)
    rows = [
        Row(f"{CRITICAL} alone, no flow control", "baseline", (CRITICAL,)),
        Row(f"{CRITICAL} alone, flow control", policy, (CRITICAL,)),
        Row("both, no flow control (legacy shedding)", "baseline", (CRITICAL, SHEDDABLE)),
        Row("both, flow control (bands)", policy, (CRITICAL, SHEDDABLE)),
        *(
            Row(f"{label}, vLLM priority scheduling", f"{config}+{PRIORITY_FIELD}", both, "priority")
            for label, config in (
                ("both, no flow control (legacy shedding)", "baseline"),
                ("both, flow control (bands)", "bands"),
            )
        ),
        Row(f"both, flow control, {SOFT_CEILING}", SOFT_CEILING, both),
        Row(
            f"both, flow control, {SOFT_CEILING}, vLLM priority scheduling",
            f"{SOFT_CEILING}+{PRIORITY_FIELD}",
            both,
            "priority",
        ),
        Row(
            f"both, flow control, {bench.args.reserved_critical} of {bench.spec.cluster.endpoints} pods "
            f"reserved for {CRITICAL}",
            RESERVED_CRITICAL,
            both,
            reserved=bench.args.reserved_critical,
        ),
        Row(f"both, flow control, {DEMAND_LABEL} for {CRITICAL}", DEMAND_CRITICAL, both),
    ]
    return side_by_side(bench, streams, rows, with_jain=False)


def side_by_side(bench: Bench, streams: tuple[Stream, Stream], rows: Sequence[Row], with_jain: bool) -> str:
    """Each row's run: the protected stream (the first) alone or with the flood (the second),
    its TTFT against the first row's, both streams' throughput, Jain's index, the errors."""
    protected, flood = streams
    requests = bench.requests(streams)
    alone = [r for r in requests if r.group == protected.name]
    demands = [protected.rate * bench.duty() * bench.args.output_len, flood.rate * bench.args.output_len]
    lines = []
    reference = None
    if bench.args.engine == "realtime":  # pod labels are set in virtual time only
        rows = [r for r in rows if not r.reserved]
    if bench.args.row:
        rows = [rows[0], *(r for r in rows[1:] if any(part in r.label for part in bench.args.row))]
    for row in rows:
        result, routed = bench.run(row, alone if len(row.streams) == 1 else requests)
        measured = {s: bench.measure(result, routed, s) for s in row.streams}
        p, f = measured[protected.name], measured.get(flood.name)
        reference = reference or p.ttft_p90
        line = [
            row.label,
            f"{_ms(p.ttft_p50)} / {_ms(p.ttft_p90)}",
            f"{p.ttft_p90 / reference - 1:+.0%}",
            f"{_ms(p.queued_p90)} / {_ms(p.served_p90)}" if not math.isnan(p.queued_p90) else "-",
            _ms(f.ttft_p90) if f else "-",
            f"{p.tokens_per_s:,.0f}",
            f"{f.tokens_per_s:,.0f}" if f else "-",
        ]
        if with_jain:
            line.append(f"{jain([p.tokens_per_s, f.tokens_per_s], demands):.3f}" if f else "-")
        line.append(_errors(measured))
        lines.append(line)
        print(" | ".join(line), flush=True)
    header = [
        "run",
        f"{protected.name} TTFT p50 / p90",
        f"{protected.name} p90 vs alone",
        f"{protected.name} p90 in the EPP / after routing",
        f"{flood.name} TTFT p90",
        f"{protected.name} out tok/s",
        f"{flood.name} out tok/s",
        *(["Jain (max-min)"] if with_jain else []),
        "errors",
    ]
    return table(header, lines)


def main(args: argparse.Namespace) -> int:
    bench = Bench(args)
    spec = bench.spec
    parts = [
        f"- command: `{args.command_line}` ({ENGINES[args.engine]})",
        f"- cluster: {spec.cluster.endpoints} simulated {spec.cluster.profile} servers; prompts shaped as "
        f"{spec.name} ({bench.data.system_prompt_len}-token shared prefix per group, "
        f"{bench.data.question_len}-token question), {args.output_len} output tokens; "
        f"capacity taken as {args.capacity:g} req/s; arrivals for {args.seconds:g} s, figures over "
        f"{args.warmup:g}-{args.seconds:g} s; flow control: {args.config}"
        + (f" with maxConcurrency {args.max_concurrency}" if args.max_concurrency is not None else "")
        + (
            f"; the protected stream (tenant-a, critical) sends only in the first {args.burst[0]:g} s of "
            f"every {sum(args.burst):g} s"
            if args.burst
            else ""
        ),
    ]
    for scenario in args.scenario or ["tenants", "priority"]:
        print(f"{scenario}:", flush=True)
        rendered = tenants(bench) if scenario == "tenants" else priority(bench)
        parts += ["", f"**{scenario}**", "", rendered]
    publish("\n".join(parts), args.doc, "fairness")
    return 0
