"""The datastore keeps an endpoint's state across spec updates that do not change the server."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.datastore.endpoint import split_host_port


def spec(port: int = 8000, role: str = "decode") -> EndpointSpec:
    return EndpointSpec("pod-rank-0", "10.0.0.1", port, labels=MappingProxyType({"llm-d.ai/role": role}))


def test_relabelling_updates_in_place_and_a_new_port_is_a_new_endpoint() -> None:
    datastore = Datastore()
    added: list[Endpoint] = []
    removed: list[Endpoint] = []
    datastore.subscribe(on_added=added.append, on_removed=removed.append)
    endpoint = datastore.upsert(spec())
    endpoint.inflight_requests = 2
    relabelled = datastore.upsert(spec(role="prefill"))
    assert relabelled is endpoint and endpoint.role == "prefill" and endpoint.inflight_requests == 2
    assert (len(added), len(removed)) == (1, 0)
    moved = datastore.upsert(spec(port=8001))
    assert moved is not endpoint and moved.inflight_requests == 0
    assert removed == [endpoint] and added[-1] is moved


def test_suspended_endpoints_are_not_ready() -> None:
    datastore = Datastore()
    endpoint = datastore.upsert(spec())
    endpoint.suspended_until = float("inf")
    assert datastore.ready_endpoints() == []
    endpoint.suspended_until = 0.0
    assert datastore.ready_endpoints() == [endpoint]


def test_an_overdue_endpoint_is_ready_only_when_no_other_is() -> None:
    datastore = Datastore()
    hung, prompt, down = (
        datastore.upsert(EndpointSpec(n, "10.0.0.1", p)) for n, p in (("a", 1), ("b", 2), ("c", 3))
    )
    down.healthy = False
    hung.scrape_overdue = True
    assert datastore.ready_endpoints() == [prompt]
    prompt.suspended_until = float("inf")
    assert datastore.ready_endpoints() == [hung]  # the last resort: a slow server, not a 503
    down.healthy, prompt.suspended_until = True, 0.0
    assert datastore.ready_endpoints() == [prompt, down]


def test_split_host_port() -> None:
    assert split_host_port("10.0.0.1:8000") == ("10.0.0.1", 8000)
    assert split_host_port("[fd00::1]:8000") == ("fd00::1", 8000)
    assert split_host_port("fd00::1") == ("fd00::1", None)
    assert split_host_port("10.0.0.1") == ("10.0.0.1", None)
    with pytest.raises(ValueError):
        split_host_port("10.0.0.1:http")
