"""Tracing end to end: `epp serve --tracing` behind real Envoy exports its spans over OTLP/HTTP to a
receiver on loopback (decoded with the OTLP protobufs), continues the client's W3C trace, and sets
`traceparent` on the request the model server receives (a probe server stands in for it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from epp.stack.processes import wait_until
from epp.stack.stack import SimEndpoint
from tests.integration.conftest import StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf) and a model server that records the
    headers it is sent, on one aiohttp server."""

    def __init__(self) -> None:
        self.spans: dict[str, Any] = {}
        self.services: set[str] = set()
        self.upstream_headers: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.setdefault(span.name, []).append(span)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def _completion(self, request: web.Request) -> web.Response:
        self.upstream_headers.append(dict(request.headers))
        return web.json_response({"id": "x", "object": "text_completion", "choices": [{"text": "hi"}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    started = Receiver()
    await started.start()
    # Inherited by the EPP the stack starts.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{started.port}")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    yield started
    await started.stop()


async def test_spans_reach_the_otlp_receiver_and_traceparent_reaches_the_model_server(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    epp_args = ["--served-header=x-epp-destination", "--refresh-metrics-interval=50ms", "--tracing"]
    async with make_stack("tracing", sims=0, epp_args=epp_args) as stack:
        # The only endpoint: the probe standing in for a model server (the file is re-read).
        probe = SimEndpoint("probe", "127.0.0.1", receiver.port)
        stack.write_endpoints_file([probe])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def probe_ready() -> bool | None:
                async with http.get(f"{stack.view_url}/api/endpoints") as response:
                    endpoints = (await response.json())["endpoints"]
                return True if [e["name"] for e in endpoints if e["ready"]] == ["probe"] else None

            await wait_until(probe_ready, "the probe endpoint", 30)
            headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "x-request-id": "traced-1"}
            body = {"model": "sim-model", "prompt": "trace me", "max_tokens": 2}
            async with http.post(
                f"{stack.gateway_url}/v1/completions", json=body, headers=headers
            ) as response:
                assert response.status == 200

        names = ("epp.request", "epp.parse", "epp.admission", "epp.schedule", "epp.profile", "epp.response")

        async def all_spans() -> bool | None:
            return True if all(name in receiver.spans for name in names) else None

        await wait_until(
            all_spans, "the EPP's spans at the OTLP receiver", 30, [stack.epp] if stack.epp else []
        )

    [root] = receiver.spans["epp.request"]
    assert root.trace_id.hex() == TRACE_ID and root.parent_span_id.hex() == CLIENT_SPAN
    attributes = {a.key: a.value.string_value for a in root.attributes}
    assert attributes["epp.request_id"] == "traced-1"
    assert attributes["epp.destination"] == probe.hostport
    for name in names[1:]:
        [span] = receiver.spans[name]
        assert span.trace_id == root.trace_id
    [schedule] = receiver.spans["epp.schedule"]
    assert receiver.spans["epp.profile"][0].parent_span_id == schedule.span_id
    assert receiver.services == {"gateway-api-inference-extension/epp"}
    [upstream] = receiver.upstream_headers
    assert upstream["traceparent"] == f"00-{TRACE_ID}-{root.span_id.hex()}-01"
