"""`destination-endpoint-served-verifier` with GIE's conformance config, through the ext_proc stream:
the served endpoint the gateway reports in the response's envoy.lb metadata comes back to the
client as `x-conformance-test-served-endpoint`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from google.protobuf import struct_pb2

from epp.config.build import build_director
from epp.config.loader import load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.extproc.pb import core, ext_proc
from epp.extproc.stream import ExtProcStream, StreamOptions
from epp.framework import PluginContext
from tests.unit.extproc.test_extproc_stream import body_msg, headers_msg, response_headers_msg, set_headers

CONFORMANCE = (
    Path(__file__).parents[2]
    / "data"
    / "upstream"
    / "configs"
    / "gie-1748e82__conformance__resources__base.yaml"
)


def stream() -> ExtProcStream:
    store = Datastore()
    for i in (1, 2):
        store.upsert(EndpointSpec(name=f"pod{i}", address=f"10.0.0.{i}", port=3000))
    store.synced = True
    director, _ = build_director(load_config_file(CONFORMANCE), store, PluginContext())
    return ExtProcStream(director, StreamOptions())


def served(metadata: dict[str, dict[str, object]] | None) -> ext_proc.ProcessingResponse:
    """Route a request to 10.0.0.2 and answer its response headers carrying `metadata`."""
    s = stream()
    selection = {"test-epp-endpoint-selection": "10.0.0.2"}
    list(s.handle(headers_msg(extra=selection)))
    routed, *_ = list(s.handle(body_msg(orjson.dumps({"model": "m", "prompt": "hi"}))))
    assert set_headers(routed.request_headers.response)["x-gateway-destination-endpoint"] == "10.0.0.2:3000"
    message = response_headers_msg("application/json")
    if metadata is not None:
        structs = {}
        for namespace, values in metadata.items():
            struct = struct_pb2.Struct()
            struct.update(values)
            structs[namespace] = struct
        message.metadata_context.CopyFrom(core.Metadata(filter_metadata=structs))
    (reply,) = list(s.handle(message))
    return reply


def added_headers(reply: ext_proc.ProcessingResponse) -> dict[str, str]:
    mutation = reply.response_headers.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


@pytest.mark.parametrize(
    ("metadata", "header"),
    [
        ({"envoy.lb": {"x-gateway-destination-endpoint-served": "10.0.0.2:3000"}}, "10.0.0.2:3000"),
        ({"envoy.lb": {"other": "x"}}, "fail: missing destination endpoint served metadata"),
        ({"envoy.lb.subset_hint": {"x": "y"}}, "fail: missing envoy lb metadata"),
        (None, "fail: missing envoy lb metadata"),
    ],
)
def test_served_endpoint_metadata_becomes_the_conformance_header(
    metadata: dict[str, dict[str, object]] | None, header: str
) -> None:
    assert added_headers(served(metadata))["x-conformance-test-served-endpoint"] == header
