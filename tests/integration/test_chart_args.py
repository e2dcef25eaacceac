"""The EPP container as GIE's and llm-d's Helm charts render it: its args exactly as rendered
(quote characters inside args included, no `serve` subcommand: the image's entrypoint is `epp`),
its env and its mounted ConfigMap, run as `python -m epp.cli <args>` against the Kubernetes API
server double. It must become ready (grpc health SERVING) and scrape the model servers with the
metric names, path and ports the chart gave it.

The renders are tests/data/upstream/charts/ (helm template of each chart at the commit recorded
in that directory's SOURCES.yaml). What differs from a cluster, and nothing else:
- the ConfigMap is written to a temporary directory standing for the `/config` mount, and the
  `--config-file` path points there;
- the model servers are aiohttp servers on free 127.0.0.1 ports, so those ports replace the
  rendered target ports (the InferencePool's `targetPorts`, or the `--endpoint-target-ports`
  value), and the pods' IP is 127.0.0.1;
- appended, because a test cannot use a service account or fixed ports: `--kubeconfig` (the
  double), `--host=127.0.0.1`, `--grpc-port=0 --grpc-health-port=0 --metrics-port=0` and
  `--ready-file` (to learn the bound ports);
- the env's downward-API fields are resolved as the kubelet would (namespace, a pod name)."""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.stack.processes import ManagedProcess, epp_command, ready_file_probe, wait_until
from tests.k8s_double import PODS, POOLS_V1, ApiServerDouble, User
from tests.k8s_double.objects import pod

pytestmark = pytest.mark.e2e

CHARTS = Path(__file__).resolve().parents[1] / "data" / "upstream" / "charts"
STARTUP = 30.0
PROMETHEUS, PROMETHEUS_TOKEN = "system:serviceaccount:monitoring:prometheus", "prometheus-token"
Doc = dict[str, Any]


@dataclass
class Case:
    render: str  # a file in tests/data/upstream/charts
    path: str  # where the model servers publish their metrics
    page: str  # what they publish
    pool_name: str  # the `name` label of the EPP's inference_pool_* gauges
    queue: float  # inference_pool_average_queue_size the EPP must report from `page`
    extra_gauges: dict[str, float] = field(default_factory=dict)


# Every page also carries the vLLM names with other values: a scrape with the wrong names (the
# flags not applied) would report those instead.
DECOY = 'vllm:num_requests_waiting{model_name="m"} 99\nvllm:kv_cache_usage_perc{model_name="m"} 0.99\n'

CASES = [
    # GIE v1.5.0 standalone chart, SGLang: --endpoint-selector mode; the metric flags quoted.
    Case(
        "standalone-v1.5.0-endpoint-selector-sglang.yaml",
        "/metrics",
        DECOY + 'sglang:num_queue_reqs{model_name="m"} 4\nsglang:num_running_reqs{model_name="m"} 2\n'
        'sglang:token_usage{model_name="m"} 0.25\n',
        "vllm-llama3-8b-instruct-epp",
        4,
        {"inference_pool_average_kv_cache_utilization": 0.25, "inference_pool_average_running_requests": 2},
    ),
    # GIE v1.5.0 inferencepool chart, trtllm-serve: the pool; quoted names and a quoted metrics
    # path (its config says path "/metrics": the flag must win), LoRA turned off with "".
    Case(
        "inferencepool-v1.5.0-trtllm-serve.yaml",
        "/prometheus/metrics",
        DECOY
        + "trtllm_num_requests_waiting 5\ntrtllm_num_requests_running 3\ntrtllm_kv_cache_utilization 0.5\n",
        "vllm-llama3-8b-instruct",
        5,
        {"inference_pool_average_kv_cache_utilization": 0.5, "inference_pool_average_running_requests": 3},
    ),
    # GIE v1.3.1 inferencepool chart, Triton: label selectors in the metric specs.
    Case(
        "inferencepool-v1.3.1-triton-tensorrt-llm.yaml",
        "/metrics",
        DECOY + 'nv_trt_llm_request_metrics{request_type="waiting",model="m"} 6\n'
        'nv_trt_llm_request_metrics{request_type="scheduled",model="m"} 1\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="m"} 0.75\n',
        "vllm-llama3-8b-instruct",
        6,
        {"inference_pool_average_kv_cache_utilization": 0.75},
    ),
    # llm-d router-gateway chart at main with the coord-disaggregation guide's values: one EPP for
    # the encode, prefill and decode roles, header-profile-handler (Alpha in the router) included.
    Case(
        "llm-d-router-gateway-main-ebab687-llmd-guide-coord-disaggregation.yaml",
        "/metrics",
        'vllm:num_requests_waiting{model_name="m"} 2\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n',
        "coord-disaggregation",
        2,
        {"inference_pool_average_kv_cache_utilization": 0.5},
    ),
    # llm-d router-standalone chart v0.10.0: --endpoint-selector with two target ports (two ranks).
    Case(
        "llm-d-router-standalone-v0.10.0-endpoint-selector.yaml",
        "/metrics",
        'vllm:num_requests_waiting{model_name="m"} 3\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n',
        "qwen3-32b-epp",
        3,
        {"inference_pool_ready_pods": 2},
    ),
]


def load(render: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all((CHARTS / render).read_text()) if doc]


def one(docs: list[Doc], kind: str) -> Doc | None:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) <= 1
    return found[0] if found else None


def epp_container(docs: list[Doc]) -> tuple[Doc, Doc]:
    """(the EPP Deployment's pod spec, its `epp` container)."""
    deployment = one(docs, "Deployment")
    assert deployment is not None
    spec = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "epp"]
    return spec, container


def test_the_renders_run_the_image_with_flags_only() -> None:
    """No `command`, and args that start with a flag: what the image's entrypoint must serve."""
    for case in CASES:
        _, container = epp_container(load(case.render))
        assert "command" not in container
        assert container["args"][0].startswith("--")


class ModelServer:
    """One model-server port: its metrics page at `path` (anything else is 404), requests counted."""

    def __init__(self, path: str, page: str) -> None:
        self.path = path
        self.page = page
        self.requests: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page)

    async def start(self) -> None:
        app = web.Application(middlewares=[self.record])
        app.router.add_get(self.path, self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Cluster:
    api: ApiServerDouble
    servers: list[ModelServer]
    epp: ManagedProcess
    ports: dict[str, int]


def deploy(
    docs: list[Doc], api: ApiServerDouble, servers: list[ModelServer], tmp: Path
) -> tuple[list[str], dict[str, str]]:
    """Put the chart's objects into the double and return the EPP's argv and env, substituted as
    the module docstring says."""
    spec, container = epp_container(docs)
    args: list[str] = list(container["args"])
    ports = [server.port for server in servers]
    namespace = one(docs, "Deployment")["metadata"]["namespace"]  # type: ignore[index]

    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/config")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    config_dir = tmp / "config"
    config_dir.mkdir()
    for key, text in config_map["data"].items():
        (config_dir / key).write_text(text)
    index = args.index("--config-file")
    args[index + 1] = args[index + 1].replace("/config", str(config_dir), 1)

    pool = one(docs, "InferencePool")
    if pool is not None:
        selector = pool["spec"]["selector"]["matchLabels"]
        assert len(pool["spec"]["targetPorts"]) == len(ports)
        pool = copy.deepcopy(pool)
        pool["spec"]["targetPorts"] = [{"number": port} for port in ports]
        api.apply(POOLS_V1, pool)
    else:
        index = args.index("--endpoint-selector")
        selector = dict(term.split("=", 1) for term in args[index + 1].split(","))
        index = args.index("--endpoint-target-ports")
        assert len(args[index + 1].split(",")) == len(ports)
        args[index + 1] = ",".join(str(port) for port in ports)
    api.apply(PODS, pod("model-server-0", "127.0.0.1", labels=selector, namespace=namespace))

    kubelet = {"metadata.namespace": namespace, "metadata.name": "epp-6d4b8c9f7-x2x4q"}
    deployment_name = one(docs, "Deployment")["metadata"]["name"]  # type: ignore[index]
    kubelet["metadata.name"] = f"{deployment_name}-6d4b8c9f7-x2x4q"
    env = {e["name"]: kubelet[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in container.get("env", [])}

    args += [
        f"--kubeconfig={api.write_kubeconfig(tmp / 'kubeconfig', namespace)}",
        "--host=127.0.0.1",
        "--grpc-port=0",
        "--grpc-health-port=0",
        "--metrics-port=0",
        f"--ready-file={tmp / 'epp.ready.json'}",
    ]
    return args, env


@pytest.fixture(params=CASES, ids=[case.render.removesuffix(".yaml") for case in CASES])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Case, Cluster]]:
    case: Case = request.param
    docs = load(case.render)
    api = ApiServerDouble()
    await api.start()
    servers: list[ModelServer] = []
    epp: ManagedProcess | None = None
    try:
        _, container = epp_container(docs)
        pool = one(docs, "InferencePool")
        if pool is not None:
            count = len(pool["spec"]["targetPorts"])
        else:
            count = len(container["args"][container["args"].index("--endpoint-target-ports") + 1].split(","))
        for _ in range(count):
            server = ModelServer(case.path, case.page)
            await server.start()
            servers.append(server)
        args, env = deploy(docs, api, servers, tmp_path)
        # No drain window on stop (the charts leave the router's 30 s default).
        epp = ManagedProcess("epp", epp_command(*args, "--drain-timeout=0s"), tmp_path / "epp.log", env=env)
        await epp.start()
        ports = await wait_until(ready_file_probe(tmp_path / "epp.ready.json"), "the EPP", STARTUP, [epp])
        yield case, Cluster(api, servers, epp, ports)
    finally:
        if epp is not None:
            await epp.stop()
        for server in servers:
            await server.stop()
        await api.stop()


async def health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service="inference-extension")
        response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        return int(response.status)


def gauge(page: str, name: str, pool: str) -> float | None:
    found = re.search(rf'^{name}\{{name="{re.escape(pool)}"\}} (\S+)$', page, re.M)
    return float(found.group(1)) if found else None


async def test_the_chart_rendered_epp_becomes_ready_and_scrapes_with_the_charts_names(
    cluster: tuple[Case, Cluster],
) -> None:
    case, running = cluster

    async def serving() -> bool | None:
        return (
            True
            if await health(running.ports["health_port"]) == health_pb2.HealthCheckResponse.SERVING
            else None
        )

    await wait_until(serving, "health SERVING", STARTUP, [running.epp])

    expected = {"inference_pool_average_queue_size": case.queue, **case.extra_gauges}
    url = f"http://127.0.0.1:{running.ports['metrics_port']}/metrics"
    # As Prometheus scrapes GIE's EPP: with a token the API server reviews (metrics auth is on by
    # default with --pool-name).
    running.api.add_user(PROMETHEUS_TOKEN, User(PROMETHEUS))
    running.api.grant(PROMETHEUS, "get", "/metrics")
    headers = {"Authorization": f"Bearer {PROMETHEUS_TOKEN}"}
    async with httpx.AsyncClient(timeout=5, headers=headers) as client:

        async def scraped() -> dict[str, float | None] | None:
            page = (await client.get(url)).text
            values = {name: gauge(page, name, case.pool_name) for name in expected}
            return values if values == expected else None

        await wait_until(scraped, f"the EPP's pool gauges to read {expected}", STARTUP, [running.epp])

    for server in running.servers:
        assert server.requests, "every model-server port is scraped"
        assert set(server.requests) == {case.path}, "only the configured metrics path"
