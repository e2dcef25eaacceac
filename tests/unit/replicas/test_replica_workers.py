from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from epp.cli import parse_args
from epp.replicas import flags
from epp.replicas.workers import Supervisor, WorkerPlan, free_port, free_port_run, serve_argv, strip_flags


def test_strip_flags_removes_both_forms_and_keeps_the_rest() -> None:
    argv = ["--workers", "4", "--grpc-port=9002", "--endpoint", "a:1", "--reuse-port", "--replica-sync", "x"]
    assert strip_flags(argv, ["--workers", "--grpc-port", "--replica-sync"], ["--reuse-port"]) == [
        "--endpoint",
        "a:1",
    ]


def test_worker_argv_shares_the_ports_and_names_each_replica(tmp_path: Path) -> None:
    plan = WorkerPlan(
        workers=2,
        host="127.0.0.1",
        grpc_port=9002,
        health_port=9003,
        metrics_port=9090,
        ready_file=tmp_path / "ready.json",
        sync_url="redis://127.0.0.1:6379/0",
        replica_id="pod",
        shutdown_grace=1.0,
    )
    supervisor = Supervisor(
        plan, ["--workers=2", "--metrics-port", "9090", "--reuse-port", "--endpoint", "a:1"]
    )
    argv = supervisor.worker_argv(1)
    assert argv[argv.index("serve") + 1 : argv.index("serve") + 3] == ["--endpoint", "a:1"]
    for expected in (
        "--grpc-port=9002",
        "--grpc-health-port=9003",
        "--metrics-port=9091",
        "--replica-id=pod-w1",
        "--reuse-port",
        "--replica-sync=redis://127.0.0.1:6379/0",
    ):
        assert expected in argv
    assert not any(a.startswith("--workers") for a in argv)


def test_only_the_first_worker_writes_envoys_eds_file(tmp_path: Path) -> None:
    """Each worker has its own view of the endpoints' health: two writers would flip the file."""
    plan = WorkerPlan(2, "127.0.0.1", 9002, 9003, 0, tmp_path / "ready.json", None, "pod", 1.0)
    argv = ["--workers=2", "--envoy-eds-file", "pool/endpoints.yaml", "--endpoint", "a:1"]
    supervisor = Supervisor(plan, argv)
    first, second = supervisor.worker_argv(0), supervisor.worker_argv(1)
    assert first[first.index("--envoy-eds-file") + 1] == "pool/endpoints.yaml"
    assert "--envoy-eds-file" not in second and "pool/endpoints.yaml" not in second
    assert second[second.index("serve") + 1 : second.index("serve") + 3] == ["--endpoint", "a:1"]


def test_metrics_port_zero_gives_the_workers_a_free_run_kept_across_restarts(tmp_path: Path) -> None:
    """With --metrics-port 0 each worker had a new random port at every start: a restarted worker
    left the ready file's (and the printed live view's) port dead, and the whole EPP restarted with
    --metrics-port set to the first gave worker i that port + i, not its own."""
    plan = WorkerPlan(3, "127.0.0.1", 9002, 9003, 0, tmp_path / "ready.json", None, "pod", 1.0)
    supervisor = Supervisor(plan, ["--workers=3", "--metrics-port=0"])

    def metrics_ports() -> list[int]:
        return [
            int(next(a for a in supervisor.worker_argv(i) if a.startswith("--metrics-port=")).split("=")[1])
            for i in range(3)
        ]

    first = metrics_ports()
    assert first[0] > 0 and first == [first[0], first[0] + 1, first[0] + 2]
    assert metrics_ports() == first  # a restarted worker binds the port it had
    for port in first:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # free when picked


def test_a_free_port_run_leaves_out_ports_already_chosen() -> None:
    """The gRPC and health ports are chosen (free, not yet bound) before the metrics run: a run
    found free by binding could include them. Here every port but 3 in each 8 is 'chosen': the
    run found is clear of all of them (before, the first free run, clear by chance 1 in 8), and so
    is a single port."""
    chosen = {port for port in range(1024, 65536) if port % 8 >= 3}
    for _ in range(5):
        first = free_port_run("127.0.0.1", 3, exclude=chosen)
        assert not chosen & {first, first + 1, first + 2}, first
        assert free_port("127.0.0.1", exclude=chosen, attempts=500) not in chosen
    plan = WorkerPlan(4, "127.0.0.1", 0, 0, 0, None, None, "pod", 1.0)
    supervisor = Supervisor(plan, ["--workers=4"])
    assert len({supervisor.grpc_port, supervisor.health_port}) == 2
    assert not {supervisor.grpc_port, supervisor.health_port} & set(
        range(supervisor.metrics_port, supervisor.metrics_port + 4)
    )


def test_a_free_port_run_is_refused_past_its_attempts() -> None:
    message = "no 70000 consecutive free ports on 127.0.0.1 in 3 attempts"
    with pytest.raises(OSError, match=re.escape(message)):
        free_port_run("127.0.0.1", 70_000, attempts=3)


def test_replica_flags() -> None:
    args = parse_args(
        ["serve", "--replica-sync", "redis://h:6379/1", "--replica-id", "a", "--replica-load-interval", "0.2"]
    )
    options = flags.options_from_args(args)
    assert options.sync_url == "redis://h:6379/1" and options.resolved_id() == "a"
    assert options.ttl == pytest.approx(4.0)
    assert options.resolved_namespace("pool") == "epp:pool"
    assert flags.options_from_args(parse_args(["serve"])).sync_url is None


def test_each_workers_command_line_parses_as_epp_parses_it(tmp_path: Path) -> None:
    """`epp --log-level=DEBUG --workers=2 ...` (serve implied): the top-level level is the
    supervisor's, not a serve flag a worker would refuse; the workers log at that level."""
    plan = WorkerPlan(2, "127.0.0.1", 9002, 9003, 0, tmp_path / "ready.json", None, "pod", 1.0, "DEBUG")
    for command_line in (
        ["--log-level=DEBUG", "--workers=2", "--endpoint", "a:1"],
        ["--log-level", "DEBUG", "serve", "--workers", "2", "--endpoint", "a:1"],
    ):
        supervisor = Supervisor(plan, serve_argv(command_line))
        for index in (0, 1):
            argv = supervisor.worker_argv(index)
            assert argv[1:3] == ["-m", "epp.cli"]
            args = parse_args(argv[3:])
            assert (args.workers, args.endpoint, args.log_level) == (1, ["a:1"], "DEBUG")


def test_abbreviated_serve_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """The workers get the supervisor's command line: `--worker=2` would make each of them a
    supervisor of two more, and `--envoy-eds=...` a second writer of Envoy's file. GIE's Go flags
    take no abbreviations either."""
    for flag in ("--worker=2", "--envoy-eds=pool.yaml"):
        with pytest.raises(SystemExit) as exited:
            parse_args(["serve", flag, "--endpoint", "a:1"])
        assert exited.value.code == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["0", "-3"])
def test_fewer_than_one_worker_is_refused(count: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`epp serve --workers 0` served as a single process instead of saying the flag is wrong."""
    with pytest.raises(SystemExit):
        parse_args(["serve", "--endpoint", "127.0.0.1:8000", f"--workers={count}"])
    assert f"argument --workers: expected at least 1, not {count}" in capsys.readouterr().err
    assert parse_args(["serve", "--endpoint", "127.0.0.1:8000", "--workers=2"]).workers == 2
