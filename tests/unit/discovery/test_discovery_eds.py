"""`epp serve --envoy-eds-file`: the pool as Envoy's EDS file, rewritten as endpoints come and go."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from epp.datastore import Datastore, EndpointSpec
from epp.discovery.eds import EdsFileWriter, EdsHost, eds_document


def spec(name: str, port: int, role: str | None = None, models: frozenset[str] = frozenset()) -> EndpointSpec:
    labels = MappingProxyType({"llm-d.ai/role": role} if role else {})
    return EndpointSpec(name=name, address="10.0.0.1", port=port, labels=labels, models=models)


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
    await writer.stop()


def lb_endpoints(path: Path) -> list[dict[str, Any]]:
    (assignment,) = yaml.safe_load(path.read_text())["resources"]
    return list(assignment["endpoints"][0]["lb_endpoints"])


def test_each_host_carries_its_health_and_fallback_group() -> None:
    document = eds_document([EdsHost("127.0.0.1:8000", healthy=False, group="models-1"), "127.0.0.1:8001"])
    down, up = document["resources"][0]["endpoints"][0]["lb_endpoints"]
    assert (down["health_status"], up["health_status"]) == ("UNHEALTHY", "HEALTHY")
    assert down["metadata"] == {"filter_metadata": {"envoy.lb": {"x-epp-fallback-group": "models-1"}}}
    assert up["metadata"] == {"filter_metadata": {"envoy.lb": {"x-epp-fallback-group": "any"}}}


def test_endpoints_serving_the_same_models_share_a_fallback_group() -> None:
    datastore = Datastore()
    a = datastore.upsert(spec("a", 8000, models=frozenset({"m", "lora"})))
    b = datastore.upsert(spec("b", 8001, models=frozenset({"lora", "m"})))
    other = datastore.upsert(spec("o", 8002, models=frozenset({"other"})))
    anything = datastore.upsert(spec("any", 8003))
    assert a.fallback_group == b.fallback_group != other.fallback_group
    assert anything.fallback_group == "any"
    anything.served_models = frozenset({"m", "lora"})  # its own model list, once read
    assert anything.fallback_group == a.fallback_group


async def test_health_and_groups_are_kept_in_step_with_the_epps_view(tmp_path: Path) -> None:
    """Out of rotation (scrapes failing, or suspended by the data plane's report) is UNHEALTHY in
    Envoy's file within a refresh; back in rotation, HEALTHY again; a new model list, a new group."""
    datastore = Datastore()
    a = datastore.upsert(spec("a", 8000))
    b = datastore.upsert(spec("b", 8001))
    path = tmp_path / "endpoints.yaml"
    writer = EdsFileWriter(datastore, path, refresh=0.01)
    writer.start()

    async def written(expected: list[tuple[str, str]]) -> None:
        for _ in range(500):
            listed = [
                (e["health_status"], e["metadata"]["filter_metadata"]["envoy.lb"]["x-epp-fallback-group"])
                for e in lb_endpoints(path)
            ]
            if listed == expected:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{listed} != {expected}")

    try:
        await written([("HEALTHY", "any"), ("HEALTHY", "any")])
        a.healthy = False
        b.suspended_until = time.monotonic() + 60
        await written([("UNHEALTHY", "any"), ("UNHEALTHY", "any")])
        a.healthy, b.suspended_until = True, 0.0
        b.served_models = frozenset({"m"})
        await written([("HEALTHY", "any"), ("HEALTHY", b.fallback_group)])
    finally:
        await writer.stop()


async def test_a_failed_write_is_retried_until_it_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that fails (the directory not there to write to, a full disk) is tried again at each
    refresh, logged once as an error while it keeps failing, and once more when it succeeds: Envoy
    must not keep a removed endpoint (or a stale health) for as long as nothing else changes."""
    datastore = Datastore()
    datastore.upsert(spec("a", 8000))
    blocker = tmp_path / "pool"
    path = blocker / "endpoints.yaml"
    blocker.write_text("not a directory")  # mkdir and the write both fail
    writer = EdsFileWriter(datastore, path, refresh=0.01)
    with caplog.at_level("INFO", logger="epp.discovery.eds"):
        writer.start()
        try:
            await asyncio.sleep(0.2)  # about 20 refreshes, all failing
            errors = [r for r in caplog.records if r.levelname == "ERROR"]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            blocker.unlink()
            for _ in range(500):
                if path.exists():
                    break
                await asyncio.sleep(0.01)
            assert hosts(path)[1] == ["10.0.0.1:8000"]
            assert any("written again" in r.getMessage() for r in caplog.records)
        finally:
            await writer.stop()
