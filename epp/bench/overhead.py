"""What the EPP costs: the same simulators behind the same Envoy, without ext_proc, with a minimal
ext_proc server, and with the EPP.

One stack serves the three paths: Envoy's baseline listener round-robins without ext_proc, its
reference listener consults a minimal grpc.aio ext_proc server (epp.bench.minimal_extproc: the
floor for any Python ext_proc server, answering the same messages with the same reply shape over
the same TLS) and its gateway listener the EPP. Streamed requests with one output token (the
simulators at a time scale that makes their own latency microseconds) are sent at fixed rates to
each path in turn, in a new order every round; the difference in client latency is what the
ext_proc server adds, and its process's CPU time over the run (utime + stime from
/proc/<pid>/stat), less what it spends idle (the EPP scraping its endpoints), divided by the
requests served is its CPU per request. One server process is one core at most, so that figure
gives the rate it could hold on one core. The two servers are compared by the ratio of their CPU
per request in the same run, which holds up on a shared machine where absolute figures move.

`--versus-config FILE` adds a fourth path: a second EPP with that config behind Envoy's `versus`
listener (two configurations in one run, e.g. flow control on against off). Its figures are also
compared with the first EPP's round by round (both paths measured in the same round, minutes
apart at most), since paired differences hold up on a loaded machine better than medians do.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from epp import eventloop
from epp.bench import minimal_extproc
from epp.bench.argtypes import positive
from epp.bench.loadgen import run_realtime
from epp.bench.report import publish, table
from epp.bench.summary import percentile
from epp.bench.text import TextGenerator
from epp.bench.workload import BenchRequest
from epp.stack.envoy import BODY_MODES, EnvoyOptions
from epp.stack.processes import ManagedProcess
from epp.stack.stack import Stack, StackConfig

MODEL = "sim-model"
IDLE_SECONDS = 3.0
PATHS = ("plain Envoy", "minimal ext_proc", "EPP")
SIMS = "simulators"
PROMPT_GROUPS = 16  # distinct shared prefixes (system prompts) the requests are spread over
QUEUE_DURATION = "inference_extension_flow_control_request_queue_duration_seconds"
HELD = "0.001"  # a queue-duration bucket bound (s): a dispatched request that waited longer was held


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate", action="append", type=positive(float), default=[], help="req/s (default 100, 300, 500)"
    )
    parser.add_argument(
        "--seconds", type=positive(float), default=10.0, help="per rate, path and round (default 10)"
    )
    parser.add_argument(
        "--rounds", type=positive(int), default=1, help="repeat every rate; medians reported (default 1)"
    )
    parser.add_argument(
        "--endpoints", type=positive(int), default=64, help="simulated endpoints (default 64)"
    )
    parser.add_argument(
        "--endpoints-per-process",
        type=positive(int),
        default=32,
        help="simulated endpoints per simulator process",
    )
    parser.add_argument(
        "--prompt-tokens", type=positive(int), default=4096, help="tokens per prompt (default 4096)"
    )
    parser.add_argument(
        "--shared-tokens",
        type=int,
        default=3072,
        help=f"of which a prefix shared with the other requests of its group ({PROMPT_GROUPS} groups)",
    )
    parser.add_argument("--config-file", type=Path, help="EPP config (default: GIE's default profile)")
    parser.add_argument(
        "--versus-config",
        type=Path,
        help="also a second EPP with this config, compared with the first round by round "
        "(--doc then writes the overhead-versus block)",
    )
    parser.add_argument(
        "--body-mode",
        choices=BODY_MODES,
        default="buffered",
        help="Envoy ext_proc body mode (default buffered; the minimal server answers buffered only)",
    )
    parser.add_argument(
        "--plaintext", action="store_true", help="Envoy -> ext_proc without TLS (default TLS, as GIE)"
    )
    eventloop.add_argument(
        parser,
        help="the event loop of the EPP and the minimal server (`epp serve --event-loop`); the versus "
        "EPP keeps the default, so `--event-loop asyncio --versus-config` on the same config compares "
        "the two loops round by round",
    )
    parser.add_argument(
        "--warmup-seconds",
        type=positive(float),
        default=2.0,
        help="per path before measuring, at 50 req/s: connections, code paths, the EPPs' view of the "
        "endpoints (default 2)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=positive(float),
        default=IDLE_SECONDS,
        help=f"the window each server's idle CPU is read over (default {IDLE_SECONDS:g})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=Path("run/bench-overhead"))
    parser.add_argument("--doc", type=Path, help="also write the table into this document's overhead block")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (the fields after the parenthesised command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Prompts:
    """Prompts of `tokens` tokens: one of PROMPT_GROUPS shared prefixes of `shared` tokens, then
    text of this request alone (so the prefix-cache scorer sees both hits and new blocks)."""

    def __init__(self, tokens: int, shared: int, seed: int) -> None:
        if not 0 <= shared < tokens:
            raise ValueError(f"--shared-tokens must be below --prompt-tokens ({tokens}), not {shared}")
        self._text = TextGenerator(seed)
        self._prefixes = [self._text.text(shared) for _ in range(PROMPT_GROUPS)] if shared else []
        self._own = tokens - shared

    def requests(self, rate: float, seconds: float) -> list[BenchRequest]:
        count = int(rate * seconds)
        requests = []
        for i in range(count):
            prompt: tuple[str, ...]
            if self._prefixes:
                prompt = (self._prefixes[i % PROMPT_GROUPS], self._text.continuation(self._own))
            else:
                prompt = (self._text.text(self._own),)
            requests.append(BenchRequest(i, i / rate, "overhead", 1, prompt=prompt))
        return requests


@dataclass
class PathRun:
    p50: float
    p99: float
    wall: float
    served: int
    errors: Counter[str]  # by kind (`http 429`, a client exception)
    server_cpu: float  # seconds of the ext_proc server's CPU over the run (0 for plain Envoy)
    envoy_cpu: float  # seconds
    sims_cpu: float  # seconds, every simulator process

    @property
    def achieved(self) -> float:
        return self.served / self.wall if self.wall else 0.0

    def per_request(self, cpu: float) -> float:
        return cpu / self.served if self.served else float("nan")

    def busy_per_request(self, idle: float) -> float:
        """The server's CPU per request less what it would have spent idle over the run."""
        return self.per_request(max(self.server_cpu - idle * self.wall, 0.0))


async def measure(
    stack: Stack, url: str, server: ManagedProcess | None, requests: list[BenchRequest]
) -> PathRun:
    assert stack.envoy is not None
    names = [s.name for s in stack.sims]
    server0 = cpu_seconds(server.pid) if server else 0.0
    envoy0, sims0 = cpu_seconds(stack.envoy.pid), sum(cpu_seconds(p.pid) for p in stack.sim_processes)
    result = await run_realtime(requests, url, MODEL, names)
    server1 = cpu_seconds(server.pid) if server else 0.0
    envoy1, sims1 = cpu_seconds(stack.envoy.pid), sum(cpu_seconds(p.pid) for p in stack.sim_processes)
    latencies = [r.e2e for r in result.records if r.ok and r.e2e is not None]
    return PathRun(
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        wall=result.wall_seconds,
        served=len(latencies),
        errors=Counter(r.error or "incomplete" for r in result.records if not r.ok),
        server_cpu=server1 - server0,
        envoy_cpu=envoy1 - envoy0,
        sims_cpu=sims1 - sims0,
    )


async def idle_cores(groups: dict[str, list[ManagedProcess]], seconds: float) -> dict[str, float]:
    """The share of a core each group of processes uses with no requests, over one window (the
    EPP's scraping and timers; the simulators answering the scrapes)."""

    def cpu(processes: list[ManagedProcess]) -> float:
        return sum(cpu_seconds(p.pid) for p in processes)

    before = {name: cpu(processes) for name, processes in groups.items()}
    await asyncio.sleep(seconds)
    return {name: (cpu(processes) - before[name]) / seconds for name, processes in groups.items()}


@dataclass
class PathFigures:
    """One path at one rate, medians over the rounds."""

    p50: float
    p99: float
    achieved: float
    cpu_per_request: float  # seconds of the ext_proc server's busy CPU (nan for plain Envoy)
    envoy_per_request: float
    sims_per_request: float
    errors: Counter[str]


def figures(runs: list[PathRun], idle: float) -> PathFigures:
    return PathFigures(
        p50=statistics.median(r.p50 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
        achieved=statistics.median(r.achieved for r in runs),
        cpu_per_request=statistics.median(r.busy_per_request(idle) for r in runs),
        envoy_per_request=statistics.median(r.per_request(r.envoy_cpu) for r in runs),
        sims_per_request=statistics.median(r.per_request(r.sims_cpu) for r in runs),
        errors=sum((r.errors for r in runs), Counter()),
    )


def ratio(cpu: float, floor: float) -> float:
    """The EPP's CPU per request over the minimal server's; NaN when the floor measured none."""
    return cpu / floor if floor > 0 else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def rows_for(rate: float, by_path: dict[str, PathFigures], idle: dict[str, float]) -> list[list[str]]:
    """One row per path, in `by_path`'s order; plain Envoy and the minimal server among them."""
    plain, floor = by_path[PATHS[0]], by_path[PATHS[1]]
    rows = []
    for path, f in by_path.items():
        has_server = path != PATHS[0]
        per_core = (1 - idle[path]) / f.cpu_per_request if has_server and f.cpu_per_request > 0 else 0.0
        rows.append(
            [
                f"{rate:g}",
                path,
                f"{_ms(f.p50)} / {_ms(f.p99)}",
                f"{(f.p50 - plain.p50) * 1e3:+.2f} / {(f.p99 - plain.p99) * 1e3:+.2f}" if has_server else "—",
                f"{f.achieved:.0f}",
                f"{f.cpu_per_request * 1e3:.3f} ms" if has_server else "—",
                f"{per_core:,.0f}" if per_core else "—",
                f"{ratio(f.cpu_per_request, floor.cpu_per_request):.2f}x" if has_server else "—",
                f"{f.envoy_per_request * 1e3:.3f} ms",
                f"{f.sims_per_request * 1e3:.3f} ms",
                ", ".join(f"{n} {kind}" for kind, n in f.errors.most_common()) or "0",
            ]
        )
    return rows


def queue_counts(metrics_text: str) -> tuple[float, float]:
    """From an EPP's /metrics: requests flow control dispatched, and of them those that waited
    over HELD seconds in its queue (the pool read as saturated, or others waited first)."""
    dispatched = prompt = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != QUEUE_DURATION:
            continue
        for sample in family.samples:
            if sample.name != f"{QUEUE_DURATION}_bucket" or sample.labels.get("outcome") != "Dispatched":
                continue
            if sample.labels["le"] == "+Inf":
                dispatched += sample.value
            elif sample.labels["le"] == HELD:
                prompt += sample.value
    return dispatched, dispatched - prompt


async def scrape_queue_counts(url: str) -> tuple[float, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        return queue_counts(await response.text())


def held_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    dispatched, held = after[0] - before[0], after[1] - before[1]
    return held / dispatched if dispatched else float("nan")


def versus_label(config: Path) -> str:
    return f"EPP ({config.name})"


@dataclass(frozen=True)
class Paired:
    """The versus EPP less the first EPP, in one round."""

    p50: float  # seconds
    p99: float
    cpu: float  # busy CPU per request, seconds
    times: float  # the versus EPP's busy CPU per request over the first's
    base_cpu: float
    versus_cpu: float
    held: float  # share of the versus EPP's dispatched requests that waited over HELD s in its queue


def paired(
    base: PathRun, versus: PathRun, base_idle: float, versus_idle: float, held: float = float("nan")
) -> Paired:
    base_cpu, versus_cpu = base.busy_per_request(base_idle), versus.busy_per_request(versus_idle)
    return Paired(
        p50=versus.p50 - base.p50,
        p99=versus.p99 - base.p99,
        cpu=versus_cpu - base_cpu,
        times=ratio(versus_cpu, base_cpu),
        base_cpu=base_cpu,
        versus_cpu=versus_cpu,
        held=held,
    )


def paired_rows(rate: float, rounds: list[Paired]) -> list[list[str]]:
    """A row per round, then the medians of the rounds' differences and ratios (not differences
    of medians)."""

    def row(label: str, d: Paired) -> list[str]:
        return [
            f"{rate:g}",
            label,
            f"{d.p50 * 1e3:+.2f}",
            f"{d.p99 * 1e3:+.2f}",
            f"{d.base_cpu * 1e3:.3f} / {d.versus_cpu * 1e3:.3f} ms",
            f"{d.cpu * 1e3:+.3f} ms ({d.times:.2f}x)",
            "—" if d.held != d.held else f"{d.held:.1%}",
        ]

    def median(values: list[float]) -> float:
        """Over the rounds that measured it (NaN: nothing served, or nothing flow control dispatched)."""
        measured = [v for v in values if v == v]
        return statistics.median(measured) if measured else float("nan")

    middle = Paired(
        *(median([getattr(d, field.name) for d in rounds]) for field in dataclasses.fields(Paired))
    )
    return [*(row(str(i), d) for i, d in enumerate(rounds, 1)), row("median", middle)]


PAIRED_HEADER = [
    "offered req/s",
    "round",
    "added p50 (ms)",
    "added p99 (ms)",
    "EPP CPU per request, first / versus",
    "added CPU per request",
    f"versus EPP: dispatched after over {float(HELD) * 1e3:g} ms queued",
]

HEADER = [
    "offered req/s",
    "path",
    "p50 / p99 (ms)",
    "added p50 / p99 (ms)",
    "achieved req/s",
    "ext_proc CPU per request",
    "req/s per core",
    "CPU vs minimal",
    "Envoy CPU per request",
    "simulators CPU per request",
    "errors",
]


def stack_config(args: argparse.Namespace) -> StackConfig:
    """Envoy with its three listeners (four with --versus-config), the EPP (and the versus EPP), the
    minimal server and the simulators."""
    common = ["--refresh-metrics-interval=50ms"]
    config = [f"--config-file={args.config_file.resolve()}"] if args.config_file else []
    epp_args = [*common, f"--event-loop={args.event_loop}", *config]
    context = args.prompt_tokens * 2
    return StackConfig(
        run_dir=args.run_dir,
        sims=args.endpoints,
        sims_per_process=args.endpoints_per_process,
        model=MODEL,
        sim_args=[
            "--profile=tiny-test",
            "--time-scale=0.001",
            f"--max-model-len={context}",
            f"--max-num-batched-tokens={context}",
            f"--num-gpu-blocks={context // 4}",  # 16-token blocks: room for eight prompts
        ],
        epp_args=epp_args,
        versus_epp_args=[*common, f"--config-file={args.versus_config.resolve()}"]
        if args.versus_config
        else None,
        baseline_listener=True,
        reference_ext_proc=minimal_extproc.__name__,
        reference_args=[f"--event-loop={args.event_loop}"],
        envoy=EnvoyOptions(listen_port=0, admin_port=0, body_mode=args.body_mode, epp_tls=not args.plaintext),
    )


async def main(args: argparse.Namespace) -> int:
    if args.body_mode != "buffered":
        raise SystemExit(
            "the minimal ext_proc server answers the buffered bootstrap only (--body-mode buffered)"
        )
    rates = args.rate or [100.0, 300.0, 500.0]
    prompts = Prompts(args.prompt_tokens, args.shared_tokens, args.seed)
    versus = versus_label(args.versus_config) if args.versus_config else None
    paths = [*PATHS, *([versus] if versus else [])]
    order = list(paths)
    shuffle = random.Random(args.seed).shuffle
    table_rows: list[list[str]] = []
    versus_rows: list[list[str]] = []
    async with Stack(stack_config(args)) as stack:
        assert stack.epp is not None and stack.reference is not None
        urls = {PATHS[0]: stack.baseline_url, PATHS[1]: stack.reference_url, PATHS[2]: stack.gateway_url}
        servers = {PATHS[0]: None, PATHS[1]: stack.reference, PATHS[2]: stack.epp}
        if versus:
            urls[versus], servers[versus] = stack.versus_url, stack.versus
        for path in paths:  # warm connections, code paths and the EPPs' view of the endpoints
            await measure(stack, urls[path], servers[path], prompts.requests(50.0, args.warmup_seconds))
        groups: dict[str, list[ManagedProcess]] = {
            path: [server] if (server := servers[path]) else [] for path in paths
        }
        idle = await idle_cores({**groups, SIMS: stack.sim_processes}, args.idle_seconds)
        for rate in rates:
            runs: dict[str, list[PathRun]] = {path: [] for path in paths}
            rounds: list[Paired] = []
            for done in range(1, args.rounds + 1):
                shuffle(order)
                held = float("nan")
                for path in order:
                    requests = prompts.requests(rate, args.seconds)
                    before = await scrape_queue_counts(stack.versus_view_url) if path == versus else None
                    runs[path].append(await measure(stack, urls[path], servers[path], requests))
                    if before is not None:
                        held = held_share(before, await scrape_queue_counts(stack.versus_view_url))
                epp, floor = runs[PATHS[2]][-1], runs[PATHS[1]][-1]
                times = ratio(epp.busy_per_request(idle[PATHS[2]]), floor.busy_per_request(idle[PATHS[1]]))
                line = f"rate {rate:g} round {done}: EPP / minimal CPU per request {times:.2f}x"
                if versus:
                    rounds.append(paired(epp, runs[versus][-1], idle[PATHS[2]], idle[versus], held))
                    p50, p99, cpu, added, queued = paired_rows(rate, rounds[-1:])[0][2:]
                    line += (
                        f"; {versus} less EPP: p50 {p50} ms, p99 {p99} ms, CPU per request {cpu}, {added}; "
                        f"{queued} of its requests held in its queue"
                    )
                print(line, flush=True)
            by_path = {path: figures(runs[path], idle[path]) for path in paths}
            for row in rows_for(rate, by_path, idle):
                print(" | ".join(row), flush=True)
                table_rows.append(row)
            if versus:
                versus_rows += paired_rows(rate, rounds)
    document = _document(args, idle, table_rows, os.getloadavg())
    if versus:
        document += "\n\n" + _versus_document(args, versus, versus_rows)
    publish(document, args.doc, "overhead-versus" if versus else "overhead")
    return 0


def _versus_document(args: argparse.Namespace, versus: str, rows: list[list[str]]) -> str:
    return "\n".join(
        [
            f"{versus} less the EPP, round by round (both measured in the same round, in shuffled order):",
            "",
            table(PAIRED_HEADER, rows),
        ]
    )


def _document(
    args: argparse.Namespace, idle: dict[str, float], rows: list[list[str]], load: tuple[float, float, float]
) -> str:
    policy = f"`{args.config_file}`" if args.config_file else "GIE's default profile"
    if args.versus_config:
        policy += f", the versus EPP with `{args.versus_config}`"
    transport = f"{args.body_mode}, {'plaintext' if args.plaintext else 'TLS'}"
    return "\n".join(
        [
            f"- command: `{args.command_line}`",
            f"- machine: {os.cpu_count()} cores shared by load generator, Envoy (`--concurrency 1`), both "
            f"ext_proc servers and the simulators; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} (1 / 5 / 15 min)",
            f"- {args.endpoints} simulated endpoints ({args.endpoints_per_process} per process, tiny-test "
            f"profile at time scale 0.001), streamed requests of {args.prompt_tokens}-token prompts "
            f"({args.shared_tokens} shared within {PROMPT_GROUPS} groups) and one output token; the EPP "
            f"with {policy} ({transport}), the minimal server the same transport; {args.seconds:g} s per "
            f"rate, path and round, {args.rounds} round(s) in shuffled path order, medians shown",
            f"- idle, the EPP (scraping {args.endpoints} endpoints every 50 ms) uses {idle[PATHS[2]]:.1%} of "
            f"a core{_versus_idle(args, idle)} and the minimal server {idle[PATHS[1]]:.1%}; CPU per "
            f"request is the rest divided by the requests served; one core holds (1 - idle) / that; the "
            f"simulators, idle but answering the EPP's scrapes, use {idle[SIMS]:.0%} of a core",
            "",
            table(HEADER, rows),
        ]
    )


def _versus_idle(args: argparse.Namespace, idle: dict[str, float]) -> str:
    if not args.versus_config:
        return ""
    return f", the versus EPP {idle[versus_label(args.versus_config)]:.1%}"
