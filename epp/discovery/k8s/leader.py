"""Leader election's flags, timing and Lease name, as GIE's EPP has them (controller-runtime's
leader election with client-go's Lease lock), for `--ha-enable-leader-election`. The elector that
campaigns is `epp.discovery.k8s.elector`, imported only when election is on (it needs the
Kubernetes client library, slow to import).

The Lease is `epp-<namespace>-<pool>.gateway-api-inference-extension.sigs.k8s.io` in the pool's
namespace, the timing controller-runtime's defaults (lease 15 s, renew deadline 10 s, retry 2 s)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from epp.discovery.k8s.model import PoolRef
from epp.params.duration import parse_duration
from epp.tls import parse_bool


@dataclass(frozen=True)
class LeaseTiming:
    """controller-runtime's defaults. `lease_duration` is whole seconds (Lease.spec's unit)."""

    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if self.lease_duration < 1:
            raise ValueError("the lease duration must be at least 1s")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs retry period < renew deadline < lease duration")

    @property
    def request_timeout(self) -> float:
        """How long one request may take: client-go's max(1 s, renew deadline / 2)."""
        return max(1.0, self.renew_deadline / 2)


def lease_name(pool: PoolRef) -> str:
    """GIE's Lease name: unique per EPP deployment, i.e. per pool."""
    return f"epp-{pool.namespace}-{pool.name}.gateway-api-inference-extension.sigs.k8s.io"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "high availability (active-passive, as GIE)",
        "Replicas elect a leader over a Lease; only the leader reports ready (readiness, '' and the "
        "ext_proc health service), so the gateway's Service routes to it, while standbys keep "
        "discovery and metrics warm. Probes should then ask for `liveness` and `readiness`.",
    )
    group.add_argument(
        "--ha-enable-leader-election",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="elect a leader over the Lease epp-<namespace>-<pool>.gateway-api-inference-extension"
        ".sigs.k8s.io (needs --pool-name and RBAC on leases)",
    )
    defaults = LeaseTiming()
    group.add_argument(
        "--ha-lease-duration",
        default=f"{defaults.lease_duration}s",
        help="how long a standby waits for a leader that stopped renewing (whole seconds; default 15s)",
    )
    group.add_argument(
        "--ha-renew-deadline",
        default=f"{defaults.renew_deadline:g}s",
        help="the leader gives up (and exits) if it cannot renew within this (default 10s)",
    )
    group.add_argument(
        "--ha-retry-period",
        default=f"{defaults.retry_period:g}s",
        help="how often candidates try and the leader renews (default 2s)",
    )


def timing_from_args(args: argparse.Namespace) -> LeaseTiming | None:
    """The election timing if --ha-enable-leader-election, else None."""
    if not args.ha_enable_leader_election:
        return None
    duration = parse_duration(args.ha_lease_duration)
    if duration != int(duration):
        raise ValueError(f"--ha-lease-duration must be whole seconds, not {args.ha_lease_duration!r}")
    return LeaseTiming(
        lease_duration=int(duration),
        renew_deadline=parse_duration(args.ha_renew_deadline),
        retry_period=parse_duration(args.ha_retry_period),
    )
