"""Benchmark the endpoint picker: routing policies on synthetic workloads in virtual or real time,
the report in docs/benchmarks.md, the two engines' agreement, and the EPP's overhead in Envoy.

  epp bench run                 every policy x workload x rate of bench/suite.yaml, virtual time
  epp bench run --engine realtime --workload shared-prefix --rate 10
  epp bench run --workload cache-pressure --seed 0 --seed 1 --workload-seed file --workload-seed 3
  epp bench report              tables, goal checks and plots into docs/benchmarks.md
  epp bench agree               one workload through both engines, compared
  epp bench overhead            Envoy with and without the EPP at fixed request rates
  epp bench scale               1,000 endpoints x 100,000 requests in virtual time, timed
  epp bench replicas            N active-active EPP replicas in virtual time, synced or naive
  epp bench fairness            two tenants, and a sheddable flood, with and without flow control
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from pathlib import Path

from epp.bench import agree, fairness, overhead, replicas, scale
from epp.bench.report import (
    BASELINE,
    Results,
    ResultsError,
    load_results,
    machine_notes,
    render_results,
    save_results,
    versus_section,
    write_block,
)
from epp.bench.suite import RunOutcome, Suite, SuiteRefused, SuiteRunner
from epp.params.flagtypes import number_in_range

SUITE = Path("bench/suite.yaml")
RESULTS = Path("bench/results")
DOC = Path("docs/benchmarks.md")
IMAGES = Path("docs/img")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="bench_command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run suite policies x workloads x rates")
    run.add_argument("--suite", type=Path, default=SUITE)
    run.add_argument("--engine", choices=("virtual", "realtime"), default="virtual")
    run.add_argument("--workload", action="append", default=[], help="only this workload (repeatable)")
    run.add_argument("--policy", action="append", default=[], help="only this policy (repeatable)")
    run.add_argument("--rate", action="append", type=float, default=[], help="only this rate (repeatable)")
    run.add_argument("--jobs", type=int, default=2, help="parallel virtual-time runs (default 2)")
    run.add_argument(
        "--scrape-interval",
        type=_scrape_interval,
        default=0.05,
        help="modelled seconds between scrapes (default 0.05, at least 0.001)",
    )
    run.add_argument("--time-scale", type=float, default=1.0, help="real time: simulators' --time-scale")
    run.add_argument(
        "--seed",
        action="append",
        type=int,
        default=[],
        help="virtual time: the routing plugins' random seed (tie-breaks), repeatable: each is its own run "
        "(default 0)",
    )
    run.add_argument(
        "--workload-seed",
        action="append",
        type=workload_seed,
        default=[],
        help="the seed of each workload's requests and arrivals in place of its file's, repeatable: each is "
        "its own run; 'file' is the file's own (the default)",
    )
    run.add_argument(
        "--results", type=Path, help="results JSON to merge into (default bench/results/<engine>.json)"
    )

    report = commands.add_parser("report", help="write tables and plots into docs/benchmarks.md")
    report.add_argument("--suite", type=Path, default=SUITE)
    report.add_argument("--results", type=Path, default=RESULTS / "virtual.json")
    report.add_argument("--doc", type=Path, default=DOC)
    report.add_argument("--images", type=Path, default=IMAGES)
    report.add_argument("--command", default="make bench", help="the command line to quote in the notes")
    report.add_argument(
        "--versus",
        action="store_true",
        help="only every policy against GIE's default on every workload, into the versus block",
    )
    report.add_argument("--baseline", default=BASELINE, help="--versus: the policy compared against")
    report.add_argument("--block", default="versus", help="--versus: the generated block to write")

    agree.add_arguments(commands.add_parser("agree", help="one workload through both engines, compared"))
    overhead.add_arguments(
        commands.add_parser("overhead", help="Envoy with and without the EPP at fixed rates")
    )
    scale.add_arguments(commands.add_parser("scale", help="time a large virtual-time run"))
    replicas.add_arguments(
        commands.add_parser("replicas", help="N active-active EPP replicas in virtual time, synced or not")
    )
    fairness.add_arguments(
        commands.add_parser("fairness", help="tenants and priorities under overload, flow control on and off")
    )


_scrape_interval = number_in_range(
    float, 0.001, message="must be at least 0.001 (modelled seconds), not {text}", name="_scrape_interval"
)


def workload_seed(text: str) -> int | None:
    """`--workload-seed`: a number, or `file` for the workload file's own seed (None)."""
    if text == "file":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor 'file'") from None


def _progress(outcome: RunOutcome) -> None:
    s, key = outcome.summary, outcome.key
    print(
        f"{key.engine:8} {key.workload:20} {key.policy:22} rate {key.rate:6g}  "
        f"seeds {key.seed}/{key.workload_seed}  "
        f"{s.output_tokens_per_s:9,.0f} tok/s  TTFT p90 {s.ttft_p90:8.3f} s  hit {s.hit_rate:4.0%}  "
        f"errors {s.errors}  ({outcome.wall_seconds:.1f} s)",
        flush=True,
    )


def run_suite(args: argparse.Namespace) -> int:
    suite = Suite.load(args.suite)
    results = args.results or RESULTS / f"{args.engine}.json"
    if results.exists():  # read before running: runs that cannot be merged would be lost
        try:
            load_results(results, suite.workload_seeds())
        except ResultsError as exc:
            return _refuse("run", str(exc))
    runner = SuiteRunner(
        suite,
        engine=args.engine,
        workloads=args.workload,
        policies=args.policy,
        rates=args.rate,
        jobs=args.jobs,
        scrape_interval=args.scrape_interval,
        time_scale=args.time_scale,
        seeds=args.seed or [0],
        workload_seeds=args.workload_seed or [None],
        progress=_progress,
    )
    try:
        outcomes = runner.run()
    except SuiteRefused as refused:
        return _refuse("run", str(refused))
    save_results(results, outcomes, runner.suite.workload_seeds())
    print(f"{len(outcomes)} runs merged into {results}")
    return 0


def report(args: argparse.Namespace) -> int:
    suite = Suite.load(args.suite)
    try:
        outcomes = load_results(args.results, suite.workload_seeds())
    except ResultsError as exc:
        return _refuse("report", str(exc))
    if not outcomes:
        return _refuse("report", f"--results {args.results} holds no runs")
    if args.versus and not any(o.key.policy == args.baseline for o in outcomes):
        return _refuse(
            "report", f"--results {args.results} holds no runs of the baseline {args.baseline!r} (--baseline)"
        )
    if args.versus:
        table = versus_section(suite, Results(outcomes), args.baseline)
        content = machine_notes(args.command) + "\n\n" + table
        write_block(args.doc, args.block, content)
        print(content)
        return 0
    content = render_results(suite, outcomes, args.images, args.doc, args.command)
    write_block(args.doc, "results", content)
    print(f"wrote the results block of {args.doc} and plots under {args.images}")
    return 0


def _refuse(command: str, message: str) -> int:
    """The usage error's exit status, 2, before anything is run or written."""
    print(f"epp bench {command}: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    # every virtual run adds its whole cluster to a fresh datastore, which logs each endpoint
    logging.getLogger("epp.datastore").setLevel(logging.WARNING)
    command = args.bench_command
    if command == "run":
        return run_suite(args)
    if command == "report":
        return report(args)
    args.command_line = "epp bench " + shlex.join(sys.argv[sys.argv.index("bench") + 1 :])
    modules = (agree, overhead, scale, replicas, fairness)
    module = next(m for m in modules if m.__name__.rsplit(".", 1)[1] == command)
    return (
        asyncio.run(module.main(args)) if asyncio.iscoroutinefunction(module.main) else int(module.main(args))
    )
