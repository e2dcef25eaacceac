"""llm-d's routing-instruction plugins: `disagg-headers-handler` (and its old name
`prefill-header-handler`) and `data-parallel-profile-handler`, checked on what reaches the gateway:
the destination and the request headers the director returns."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config, load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.plugins.disagg_headers_handler import DisaggHeadersHandler
from epp.plugins.inflight_load_producer import InFlightLoadProducer
from epp.requestcontrol import RoutedRequest
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import endpoint, plugin, request

UPSTREAM = Path(__file__).parents[2] / "data" / "upstream" / "configs"
BODY = orjson.dumps({"model": "m", "prompt": "hello " * 40})


def datastore(*specs: tuple[str, str, int, str | None]) -> Datastore:
    store = Datastore()
    for name, address, port, role in specs:
        labels = MappingProxyType({"llm-d.ai/role": role} if role else {})
        store.upsert(EndpointSpec(name=name, address=address, port=port, labels=labels))
    store.synced = True
    return store


def route(config_text_or_path: str | Path, store: Datastore) -> RoutedRequest:
    config = (
        load_config_file(config_text_or_path)
        if isinstance(config_text_or_path, Path)
        else load_config(config_text_or_path)
    )
    director, _ = build_director(config, store, PluginContext())
    return director.handle_body(BODY, {":path": "/v1/completions", ":method": "POST"}, None)


def test_headers_handler_sets_prefill_and_encode_hosts() -> None:
    handler = plugin(DisaggHeadersHandler)
    decode, prefill = endpoint("d", address="10.0.0.1"), endpoint("p", address="fd00::2", port=8200)
    encoders = [endpoint("e1", address="10.0.2.1"), endpoint("e2", address="10.0.2.2", port=9000)]
    result = SchedulingResult(
        {
            "decode": ProfileResult([decode]),
            "prefill": ProfileResult([prefill]),
            "encode": ProfileResult(encoders),
        },
        "decode",
    )
    handler.pre_request(request(), result)
    assert result.headers == {
        "x-prefiller-host-port": "[fd00::2]:8200",
        "x-encoder-hosts-ports": "10.0.2.1:8000,10.0.2.2:9000",
    }


def test_headers_handler_clears_stale_headers_without_prefill_or_encode_picks() -> None:
    handler = plugin(DisaggHeadersHandler, {"prefillProfile": "p", "encodeProfile": "e"})
    decode = endpoint("d")
    result = SchedulingResult(
        {"decode": ProfileResult([decode]), "p": None, "e": ProfileResult([])}, "decode"
    )
    result.headers.update({"x-prefiller-host-port": "1.2.3.4:80", "x-encoder-hosts-ports": "1.2.3.4:80"})
    handler.pre_request(request(), result)
    assert result.headers == {}


def test_prefill_header_handler_config_sets_the_header_with_the_v05_pd_handler() -> None:
    """llm-d v0.5's P/D sample: pd-profile-handler with `threshold: 0` (always prefill remotely)
    plus prefill-header-handler; both old names load and the decode pod learns its prefiller."""
    store = datastore(("dec", "10.0.0.1", 8000, "decode"), ("pre", "10.0.1.1", 8000, "prefill"))
    routed = route(UPSTREAM / "llmd-sched-v0.5.0__deploy__config__pd-epp-config.yaml", store)
    assert routed.destination == "10.0.0.1:8000"
    assert routed.headers["x-prefiller-host-port"] == "10.0.1.1:8000"


def test_data_parallel_handler_routes_to_the_primary_port_with_the_rank_header() -> None:
    store = datastore(("rank1", "10.0.0.1", 8001, None))
    routed = route(UPSTREAM / "llmd-sched-v0.8.0__deploy__config__dp-epp-config.yaml", store)
    assert routed.destination == "10.0.0.1:8000"
    assert routed.headers == {"x-data-parallel-host-port": "10.0.0.1:8001"}
    (rank,) = store.ready_endpoints()
    assert rank.inflight_requests == 1  # load stays on the rank that was picked
    routed.finish()
    assert rank.inflight_requests == 0


def test_data_parallel_served_at_the_primary_port_is_the_pick_not_a_retry() -> None:
    """The gateway reports the endpoint it sent to: the pod's primary port, the destination. That
    is the rank the EPP picked, served: its load (the director's and inflight-load-producer's)
    stays on the rank, and nothing is suspended as if the gateway had retried elsewhere."""
    header = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    text = (
        header
        + "plugins:\n- {type: data-parallel-profile-handler}\n- {type: inflight-load-producer, name: load}\n"
    )
    store = datastore(("rank1", "10.0.0.1", 8001, None))
    # The pod's rank 0, serving another model: never picked here, but at the reported address.
    store.upsert(EndpointSpec(name="rank0", address="10.0.0.1", port=8000, models=frozenset({"x"})))
    config = load_config(text)
    director, components = build_director(config, store, PluginContext())
    producer = components.plugins["load"]
    assert isinstance(producer, InFlightLoadProducer)
    routed = director.handle_body(BODY, {":path": "/v1/completions", ":method": "POST"}, None)
    (picked,) = routed.result.targets
    assert picked.name == "rank1"
    assert routed.destination == "10.0.0.1:8000"
    routed.served_by("10.0.0.1:8000")
    routed.response_started(200, False, {})
    assert routed.served is picked
    assert (picked.inflight_requests, producer.load.requests(picked)) == (1, 1)
    assert all(e.suspended_until == 0 for e in store.endpoints())
    routed.finish()
    assert [e.inflight_requests for e in store.endpoints()] == [0, 0]
    assert [producer.load.requests(e) for e in store.endpoints()] == [0, 0]


def test_data_parallel_handler_custom_port_and_one_profile_only() -> None:
    header = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    text = header + "plugins:\n- type: data-parallel-profile-handler\n  parameters: {primaryPort: 9000}\n"
    routed = route(text, datastore(("r", "fd00::1", 9003, None)))
    assert routed.destination == "[fd00::1]:9000"
    assert routed.headers == {"x-data-parallel-host-port": "[fd00::1]:9003"}
    two = text + "- {type: queue-scorer}\nschedulingProfiles: [{name: a}, {name: b}]\n"
    with pytest.raises(
        ValueError, match="data-parallel-profile-handler needs exactly one scheduling profile"
    ):
        load_config(two)
