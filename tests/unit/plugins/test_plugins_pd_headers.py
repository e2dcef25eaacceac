"""x-prefiller-host-port through the real ext_proc gRPC server with llm-d's P/D config: the EPP sets
it to the prefill pick on a prefill-decode decision and removes a client-sent copy on a decode-only
decision, so a forged value never reaches the decode pod's sidecar (llm-d.md 1.2: the Go EPP does
not remove it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType

import grpc
import orjson
import pytest

from epp.config.build import build_components
from epp.config.loader import load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.extproc.pb import ext_proc, ext_proc_grpc
from epp.extproc.server import Health, bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.framework import PluginContext
from epp.requestcontrol import Director
from tests.unit.extproc.test_extproc_stream import body_msg, headers_msg, read, set_headers

SAMPLE = Path(__file__).parents[3] / "epp" / "config" / "samples" / "sim-pd-epp-config.yaml"
FORGED = {"x-prefiller-host-port": "169.254.169.254:80"}


@pytest.fixture
async def stub() -> AsyncIterator[ext_proc_grpc.ExternalProcessorStub]:
    datastore = Datastore()
    for name, address, role in (("decode", "10.0.0.1", "decode"), ("prefill", "10.0.1.1", "prefill")):
        labels = MappingProxyType({"llm-d.ai/role": role})
        datastore.upsert(
            EndpointSpec(name=name, address=address, port=8000, labels=labels, models=frozenset({"m"}))
        )
    datastore.synced = True
    scheduler = build_components(load_config_file(SAMPLE), PluginContext()).scheduler
    server = ext_proc_server(Director(datastore, scheduler), StreamOptions(), Health(lambda: True))
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield ext_proc_grpc.ExternalProcessorStub(channel)
    await channel.close()
    await server.stop(0)


async def route(stub: ext_proc_grpc.ExternalProcessorStub, prompt: str) -> ext_proc.HeaderMutation:
    call = stub.Process()
    await call.write(headers_msg(extra=FORGED))
    await call.write(body_msg(orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1})))
    reply = await read(call)
    await call.done_writing()
    return reply.request_headers.response.header_mutation


async def test_decode_only_removes_a_client_sent_prefiller(stub: ext_proc_grpc.ExternalProcessorStub) -> None:
    mutation = await route(stub, "short")
    headers = set_headers(ext_proc.CommonResponse(header_mutation=mutation))
    assert headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert "x-prefiller-host-port" not in headers
    assert list(mutation.remove_headers) == ["x-prefiller-host-port"]


async def test_prefill_decode_overwrites_it_with_the_prefill_pick(
    stub: ext_proc_grpc.ExternalProcessorStub,
) -> None:
    mutation = await route(stub, "an uncached prompt of well over sixteen estimated tokens " * 4)
    headers = set_headers(ext_proc.CommonResponse(header_mutation=mutation))
    assert headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert headers["x-prefiller-host-port"] == "10.0.1.1:8000"
    assert not mutation.remove_headers
