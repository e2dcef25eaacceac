"""Two `epp serve --ha-enable-leader-election` processes against the API server double, as the
chart's replicas > 1 runs them: one leads and is ready, the other reports not-ready while its
discovery stays warm; killing the leader (SIGKILL, no release) hands over within the lease
duration, a graceful stop (SIGTERM, the Lease released) at once. Their /metrics is behind
TokenReview + SubjectAccessReview (on by default with --pool-name, as GIE)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.discovery.k8s.leader import lease_name
from epp.discovery.kubernetes import PoolRef
from epp.stack.processes import ManagedProcess, epp_command, ready_file_probe, wait_until
from tests.k8s_double import LEASES, PODS, POOLS_V1, ApiServerDouble, User
from tests.k8s_double.objects import pod, pool_v1

pytestmark = pytest.mark.e2e

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LEASE = lease_name(PoolRef("pool", "default"))
LEASE_SECONDS = 2
NO_SCRAPING = (
    "{apiVersion: inference.networking.x-k8s.io/v1alpha1, kind: EndpointPickerConfig, "
    "plugins: [{type: queue-scorer}, {type: max-score-picker}], schedulingProfiles: [{name: default, "
    "plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]}], dataLayer: {sources: []}}"
)


class Replica:
    def __init__(self, name: str, run_dir: Path, kubeconfig: Path, lease_seconds: int) -> None:
        self.ready_file = run_dir / f"{name}.ready.json"
        argv = epp_command(
            "serve",
            "--pool-name=pool",
            "--pool-namespace=default",
            f"--kubeconfig={kubeconfig}",
            "--host=127.0.0.1",
            "--grpc-port=0",
            "--grpc-health-port=0",
            "--metrics-port=0",
            f"--config-text={NO_SCRAPING}",
            "--shutdown-grace=1s",
            "--drain-timeout=0s",
            "--ha-enable-leader-election",
            f"--ha-lease-duration={lease_seconds}s",
            f"--ha-renew-deadline={lease_seconds / 2}s",
            "--ha-retry-period=100ms",
            f"--ready-file={self.ready_file}",
        )
        self.process = ManagedProcess(name, argv, run_dir / f"{name}.log")
        self.ports: dict[str, Any] = {}

    async def start(self) -> None:
        await self.process.start()
        self.ports = await wait_until(ready_file_probe(self.ready_file), "the EPP", 30, [self.process])

    async def health(self, service: str = "readiness") -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.ports['health_port']}") as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return int((await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)).status)

    async def until(self, status: int, what: str, timeout: float = 10) -> float:
        began = time.monotonic()

        async def probe() -> bool | None:
            return True if await self.health() == status else None

        await wait_until(probe, what, timeout, [self.process])
        return time.monotonic() - began

    def logged(self, text: str) -> bool:
        return text in self.process.log_path.read_text()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiServerDouble]:
    double = ApiServerDouble()
    await double.start()
    double.apply(POOLS_V1, pool_v1("pool", {"app": "vllm"}, [8000]))
    double.apply(PODS, pod("a", "10.0.0.1", labels={"app": "vllm"}))
    yield double
    await double.stop()


async def start_pair(api: ApiServerDouble, tmp_path: Path, lease_seconds: int) -> tuple[Replica, Replica]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    first = Replica("epp-a", tmp_path, kubeconfig, lease_seconds)
    await first.start()
    await first.until(SERVING, "the first replica to lead")
    second = Replica("epp-b", tmp_path, kubeconfig, lease_seconds)
    await second.start()

    async def warm() -> bool | None:
        return True if second.logged("endpoint added: a-rank-0") else None

    await wait_until(warm, "the standby's discovery", 10, [second.process])
    assert (await first.health(), await second.health()) == (SERVING, NOT_SERVING)
    assert (await second.health("liveness")) == SERVING
    return first, second


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        await replica.process.stop()


async def test_a_killed_leader_is_replaced_within_the_lease(
    api: ApiServerDouble, tmp_path: Path, replicas: list[Replica]
) -> None:
    first, second = await start_pair(api, tmp_path, LEASE_SECONDS)
    replicas += [first, second]
    await first.process.kill()
    waited = await second.until(SERVING, "the standby to take over")
    assert waited < LEASE_SECONDS + 2
    assert api.get(LEASES, LEASE)["spec"]["leaseTransitions"] == 1


async def test_a_graceful_stop_releases_the_lease(
    api: ApiServerDouble, tmp_path: Path, replicas: list[Replica]
) -> None:
    first, second = await start_pair(api, tmp_path, lease_seconds=60)
    replicas += [first, second]
    loop = asyncio.get_running_loop()
    began = loop.time()
    await first.process.stop()
    assert first.process.returncode == 0
    await second.until(SERVING, "the standby to take over", timeout=5)  # not the 60s lease
    assert loop.time() - began < 5
    assert first.logged("released Lease")


async def test_the_metrics_endpoint_needs_a_reviewed_token(
    api: ApiServerDouble, tmp_path: Path, replicas: list[Replica]
) -> None:
    replica = Replica("epp", tmp_path, api.write_kubeconfig(tmp_path / "kubeconfig"), LEASE_SECONDS)
    replicas.append(replica)
    await replica.start()
    api.add_user("prom-token", User("prometheus"))
    url = f"http://127.0.0.1:{replica.ports['metrics_port']}/metrics"
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(url)).status_code == 401
        bearer = {"Authorization": "Bearer prom-token"}
        assert (await client.get(url, headers=bearer)).status_code == 403
        # (That denial is now cached for 30s, as controller-runtime's; a granted group's member:)
        api.add_user("other-token", User("prometheus-2", groups=("monitoring",)))
        api.grant("monitoring", "get", "/metrics")
        response = await client.get(url, headers={"Authorization": "Bearer other-token"})
        assert response.status_code == 200
        assert "inference_pool_ready_pods" in response.text
