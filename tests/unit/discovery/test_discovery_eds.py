"""`epp serve --envoy-eds-file`: the pool as Envoy's EDS file, rewritten as endpoints come and go."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from epp.datastore import Datastore, EndpointSpec
from epp.discovery.eds import EdsFileWriter, eds_document


def spec(name: str, port: int, role: str | None = None) -> EndpointSpec:
    labels = MappingProxyType({"llm-d.ai/role": role} if role else {})
    return EndpointSpec(name=name, address="10.0.0.1", port=port, labels=labels)


def hosts(path: Path) -> tuple[str, list[str]]:
    document = yaml.safe_load(path.read_text())
    (assignment,) = document["resources"]
    assert assignment["@type"] == "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    assert assignment["cluster_name"] == "pool"
    listed = [
        f"{e['endpoint']['address']['socket_address']['address']}:{e['endpoint']['address']['socket_address']['port_value']}"
        for group in assignment["endpoints"]
        for e in group["lb_endpoints"]
    ]
    return document["version_info"], listed


def test_eds_document_takes_ipv6_and_needs_ports() -> None:
    document = eds_document(["127.0.0.1:8000", "[::1]:8001"], "7")
    assert document["version_info"] == "7"
    (assignment,) = document["resources"]
    addresses = [
        e["endpoint"]["address"]["socket_address"] for e in assignment["endpoints"][0]["lb_endpoints"]
    ]
    assert addresses == [{"address": "127.0.0.1", "port_value": 8000}, {"address": "::1", "port_value": 8001}]
    assert eds_document([])["resources"][0]["endpoints"] == []
    with pytest.raises(ValueError, match="needs a port"):
        eds_document(["127.0.0.1"])


async def test_the_file_follows_the_pool_without_prefill_endpoints(tmp_path: Path) -> None:
    datastore = Datastore()
    datastore.upsert(spec("a", 8000))
    datastore.upsert(spec("p", 8100, role="prefill"))
    path = tmp_path / "pool" / "endpoints.yaml"
    writer = EdsFileWriter(datastore, path)
    writer.start()
    assert hosts(path) == ("1", ["10.0.0.1:8000"])  # written before start returns
    datastore.upsert(spec("b", 8001))
    datastore.upsert(spec("c", 8002))
    await asyncio.sleep(0)  # a burst is one write, on the next turn of the loop
    assert hosts(path) == ("2", ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.1:8002"])
    datastore.remove("a")
    datastore.upsert(spec("b", 8001))  # unchanged: no new version
    await asyncio.sleep(0)
    assert hosts(path) == ("3", ["10.0.0.1:8001", "10.0.0.1:8002"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["endpoints.yaml"]  # no temporary left
    writer.stop()
