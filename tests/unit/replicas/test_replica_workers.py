from __future__ import annotations

from pathlib import Path

import pytest

from epp.cli import parse_args
from epp.replicas import flags
from epp.replicas.workers import Supervisor, WorkerPlan, strip_flags


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


def test_replica_flags() -> None:
    args = parse_args(
        ["serve", "--replica-sync", "redis://h:6379/1", "--replica-id", "a", "--replica-load-interval", "0.2"]
    )
    options = flags.options_from_args(args)
    assert options.sync_url == "redis://h:6379/1" and options.resolved_id() == "a"
    assert options.ttl == pytest.approx(4.0)
    assert options.resolved_namespace("pool") == "epp:pool"
    assert flags.options_from_args(parse_args(["serve"])).sync_url is None
