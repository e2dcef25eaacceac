"""`epp serve`'s replica flags: --replica-sync, --replica-id, --replica-namespace, --workers."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from epp.params.flagtypes import number_in_range


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    sync_url: str | None = None  # redis://host:port/db (or unix://); None: this replica alone
    replica_id: str = ""  # unique among the pool's replicas; "" = hostname-pid
    namespace: str = ""  # Redis key prefix; "" = epp:<pool name>
    interval: float = 0.1  # seconds between in-flight load exchanges
    ttl: float = 2.0  # a silent replica's load is forgotten after this
    reuse_port: bool = False  # SO_REUSEPORT on the gRPC ports (set for --workers' processes)

    def resolved_id(self) -> str:
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    def resolved_namespace(self, pool_name: str) -> str:
        return self.namespace or f"epp:{pool_name}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("active-active replicas")
    group.add_argument(
        "--replica-sync",
        metavar="URL",
        help="share prefix routes and in-flight load with the pool's other EPP replicas through this "
        "Redis (redis://host:6379/0, rediss://, unix:///path); without it a replica routes alone",
    )
    group.add_argument(
        "--replica-id", default="", help="this replica's name among its peers (default hostname-pid)"
    )
    group.add_argument(
        "--replica-namespace", default="", help="Redis key and channel prefix (default epp:<pool name>)"
    )
    group.add_argument(
        "--replica-load-interval",
        type=float,
        default=0.1,
        help="seconds between in-flight load exchanges (default 0.1); a replica silent for 20 "
        "intervals is forgotten",
    )
    group.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the gRPC ports with other processes (SO_REUSEPORT); --workers sets it",
    )
    group.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes sharing the ports (SO_REUSEPORT), each a replica; with more than one "
        "and no --replica-sync, a private redis-server on a Unix socket joins them (default 1)",
    )


# `--workers 0` (or -3) served as one process, a silent stand-in for what was asked; `epp run
# --workers` refuses them the same way.
_workers = number_in_range(int, 1, message="expected at least 1, not {value}", name="_workers")


def options_from_args(args: argparse.Namespace) -> ReplicaOptions:
    if args.replica_load_interval <= 0:
        raise ValueError("--replica-load-interval must be positive")
    return ReplicaOptions(
        sync_url=args.replica_sync or None,
        replica_id=args.replica_id,
        namespace=args.replica_namespace,
        interval=args.replica_load_interval,
        ttl=args.replica_load_interval * 20,
        reuse_port=args.reuse_port,
    )
