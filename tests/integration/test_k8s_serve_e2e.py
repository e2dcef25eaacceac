"""`epp serve --pool-name` as a real process discovering real simulators from the API server
double, behind real Envoy talking TLS to the EPP's self-signed ext_proc certificate: requests are
routed end to end, and pod and pool changes in the "cluster" change routing and readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.discovery.k8s.model import ACTIVE_PORTS_ANNOTATION
from epp.stack.envoy import EnvoyOptions
from epp.stack.processes import ManagedProcess, epp_command, ready_file_probe, wait_until
from epp.stack.stack import STARTUP_TIMEOUT, Stack, StackConfig
from tests.integration.conftest import FAST_SIM
from tests.k8s_double import PODS, POOLS_V1, ApiServerDouble
from tests.k8s_double.objects import pod, pool_v1

pytestmark = pytest.mark.e2e

MODEL = "sim-model"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class PoolStack(Stack):
    """The local stack, except that the EPP finds the simulators through an InferencePool in the
    API server double. Every simulator listens on 127.0.0.1 on its own port, so each pod lists
    the pool's targetPorts and keeps only its own active (the active-ports annotation)."""

    def __init__(self, config: StackConfig, api: ApiServerDouble) -> None:
        super().__init__(config)
        self.api = api

    def apply_pool(self) -> None:
        self.api.apply(POOLS_V1, pool_v1("sims", {"app": "sim"}, [sim.port for sim in self.sims]))

    async def start_epp(self) -> None:
        self.apply_pool()
        for index, sim in enumerate(self.sims):
            annotations = {ACTIVE_PORTS_ANNOTATION: str(sim.port)}
            self.api.apply(
                PODS, pod(f"sim-{index}", sim.host, labels={"app": "sim"}, annotations=annotations)
            )
        ready = self.run_dir / "epp.ready.json"
        argv = epp_command(
            "serve",
            "--pool-name=sims",
            "--pool-namespace=default",
            f"--kubeconfig={self.api.write_kubeconfig(self.run_dir / 'kubeconfig')}",
            "--host=127.0.0.1",
            "--grpc-port=0",
            "--grpc-health-port=0",
            "--metrics-port=0",
            "--served-header=x-epp-destination",
            "--drain-timeout=0s",
            f"--envoy-eds-file={self.pool_eds_file}",  # Envoy's pool, from the InferencePool's pods
            f"--ready-file={ready}",
        )
        self.epp = ManagedProcess("epp", argv, self.run_dir / "epp.log")
        await self.epp.start()
        self.epp_ports = await wait_until(ready_file_probe(ready), "the EPP", STARTUP_TIMEOUT, [self.epp])

    async def health(self) -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.epp_ports['health_port']}") as channel:
            request = health_pb2.HealthCheckRequest(service="inference-extension")
            response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            return int(response.status)

    async def wait_for_health(self, status: int, what: str) -> None:
        async def probe() -> bool | None:
            return True if await self.health() == status else None

        assert self.epp is not None
        await wait_until(probe, what, 10, [self.epp])

    async def wait_for_log(self, text: str, times: int = 1) -> None:
        epp = self.epp
        assert epp is not None

        async def probe() -> bool | None:
            return True if epp.log_path.read_text().count(text) >= times else None

        await wait_until(probe, f"{text!r} {times}x in the EPP log", 10, [epp])


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[PoolStack]:
    api = ApiServerDouble()
    await api.start()
    config = StackConfig(
        run_dir=tmp_path,
        sims=2,
        model=MODEL,
        sim_args=list(FAST_SIM),
        envoy=EnvoyOptions(listen_port=0, admin_port=0, epp_tls=True),
        mutual_tls=False,  # GIE's setup: the EPP's self-signed certificate, not verified
    )
    try:
        async with PoolStack(config, api) as stack:
            yield stack
    finally:
        await api.stop()


async def complete(stack: Stack, prompt: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
        return await client.post("/v1/completions", json=body)


async def destinations(stack: Stack, count: int) -> set[str]:
    seen = set()
    for i in range(count):
        response = await complete(stack, f"hello {i}")
        assert response.status_code == 200, response.text
        seen.add(response.headers["x-epp-destination"])
    return seen


async def test_requests_follow_the_pool_in_the_cluster(stack: PoolStack) -> None:
    sim0, sim1 = (sim.hostport for sim in stack.sims)
    await stack.wait_for_health(SERVING, "the EPP to sync from the API server")
    assert await destinations(stack, 12) == {sim0, sim1}

    stack.api.update(PODS, "sim-0", lambda p: p["status"]["conditions"][0].update(status="False"))
    await stack.wait_for_log("endpoint removed: sim-0-rank-0")
    assert await destinations(stack, 6) == {sim1}

    stack.api.delete(POOLS_V1, "sims")
    await stack.wait_for_health(NOT_SERVING, "readiness to drop with the pool deleted")
    response = await complete(stack, "no pool")
    assert response.status_code == 503

    stack.apply_pool()
    stack.api.update(PODS, "sim-0", lambda p: p["status"]["conditions"][0].update(status="True"))
    await stack.wait_for_health(SERVING, "readiness with the pool back")
    await stack.wait_for_log("endpoint added: sim-0-rank-0", times=2)
    assert await destinations(stack, 12) == {sim0, sim1}
