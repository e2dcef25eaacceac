"""`epp serve` with llm-d's file-discovery: the process starts with no --pool-name, --endpoint or
Kubernetes, takes its endpoints from the plugin's file, scrapes them with the default metrics
source the router injects, and follows the file when it changes."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from epp.stack.processes import ManagedProcess, epp_command, ready_file_probe, wait_until
from tests.integration.test_chart_args import ModelServer
from tests.unit.plugins.test_plugins_file_discovery import config as file_discovery_config

pytestmark = pytest.mark.e2e

STARTUP = 30.0


def endpoints_file(ports: list[int]) -> str:
    entries = "".join(
        f'  - name: vllm-{i}\n    address: "127.0.0.1"\n    port: "{p}"\n' for i, p in enumerate(ports)
    )
    return "endpoints:\n" + entries


async def test_serve_takes_its_endpoints_from_the_file_and_follows_it(tmp_path: Path) -> None:
    servers = [
        ModelServer("/metrics", 'vllm:num_requests_waiting{model_name="m"} 4\n'),
        ModelServer("/metrics", 'vllm:num_requests_waiting{model_name="m"} 2\n'),
    ]
    for server in servers:
        await server.start()
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(endpoints_file([servers[0].port]))
    config = tmp_path / "config.yaml"
    config.write_text(file_discovery_config(str(endpoints)))
    args = [
        f"--config-file={config}",
        "--host=127.0.0.1",
        "--grpc-port=0",
        "--grpc-health-port=0",
        "--metrics-port=0",
        "--secure-serving=false",
        "--drain-timeout=0s",
        f"--ready-file={tmp_path / 'ready.json'}",
    ]
    epp = ManagedProcess("epp", epp_command(*args), tmp_path / "epp.log")
    await epp.start()
    try:
        ports = await wait_until(ready_file_probe(tmp_path / "ready.json"), "the EPP", STARTUP, [epp])
        url = f"http://127.0.0.1:{ports['metrics_port']}/metrics"
        async with httpx.AsyncClient(timeout=5) as client:

            async def gauges(expected: tuple[float, float]) -> bool | None:
                page = (await client.get(url)).text
                found = []
                for name in ("inference_pool_ready_pods", "inference_pool_average_queue_size"):
                    match = re.search(rf'^{name}\{{name="epp"\}} (\S+)$', page, re.M)
                    found.append(float(match.group(1)) if match else None)
                return True if tuple(found) == expected else None

            await wait_until(lambda: gauges((1, 4)), "one endpoint scraped, pool 'epp'", STARTUP, [epp])
            assert servers[0].requests and not servers[1].requests
            endpoints.write_text(endpoints_file([servers[0].port, servers[1].port]))
            await wait_until(lambda: gauges((2, 3)), "the second endpoint from the file", STARTUP, [epp])
    finally:
        await epp.stop()
        for server in servers:
            await server.stop()
    assert "endpoints from" in (tmp_path / "epp.log").read_text()
