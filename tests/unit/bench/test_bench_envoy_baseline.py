"""The benchmark's "no EPP" baseline: a second Envoy listener, round-robin, no ext_proc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from epp.stack.envoy import EnvoyOptions, render_bootstrap
from tests.envoy_validate import assert_envoy_accepts

SIMS = ("127.0.0.1:8000", "127.0.0.1:8001")


def filters(listener: dict[str, Any]) -> list[str]:
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in manager["http_filters"]]


def test_baseline_listener_round_robins_without_ext_proc(tmp_path: Path) -> None:
    # No pool EDS file here (the EPP keeps it): ORIGINAL_DST, which Envoy validates without one.
    options = EnvoyOptions(baseline_port=10002, fallback_endpoints=SIMS, pool_eds_path=None)
    bootstrap = render_bootstrap(options)
    gateway, baseline = bootstrap["static_resources"]["listeners"]
    assert "envoy.filters.http.ext_proc" in filters(gateway)
    assert filters(baseline) == ["envoy.filters.http.router"]
    assert baseline["address"]["socket_address"]["port_value"] == 10002
    route = baseline["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    assert route["routes"][0]["route"]["cluster"] == "pool_fallback"
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    assert clusters["pool_fallback"]["lb_policy"] == "ROUND_ROBIN"
    assert len(clusters["pool_fallback"]["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    assert_envoy_accepts(bootstrap, tmp_path)


def test_no_baseline_listener_by_default_and_none_without_endpoints() -> None:
    assert len(render_bootstrap(EnvoyOptions())["static_resources"]["listeners"]) == 1
    with pytest.raises(ValueError, match="baseline listener needs fallback_endpoints"):
        render_bootstrap(EnvoyOptions(baseline_port=10002))


def ext_proc_of(manager: dict[str, Any]) -> dict[str, Any]:
    """The ext_proc filter's own config, inside the matcher that skips Envoy's protocol errors."""
    return manager["http_filters"][0]["typed_config"]["extension_config"]["typed_config"]


def test_reference_listener_consults_its_own_ext_proc_cluster_like_the_gateway(tmp_path: Path) -> None:
    """The minimal ext_proc server's listener: the gateway's filters, routes and TLS, another cluster."""
    options = EnvoyOptions(reference_epp_port=9100, reference_port=10003, pool_eds_path=None)
    bootstrap = render_bootstrap(options)
    gateway, reference = bootstrap["static_resources"]["listeners"]
    assert reference["name"] == "reference"
    assert reference["address"]["socket_address"]["port_value"] == 10003
    manager, gateway_manager = (
        listener["filter_chains"][0]["filters"][0]["typed_config"] for listener in (reference, gateway)
    )
    assert manager["route_config"] == gateway_manager["route_config"]
    ext_proc, gateway_ext_proc = ext_proc_of(manager), ext_proc_of(gateway_manager)
    assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] == "epp_reference"

    def without_service(config: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in config.items() if key != "grpc_service"}

    assert without_service(ext_proc) == without_service(gateway_ext_proc)
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    epp, reference_cluster = clusters["epp"], clusters["epp_reference"]
    assert reference_cluster["transport_socket"] == epp["transport_socket"]
    hosts = reference_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [h["endpoint"]["address"]["socket_address"]["port_value"] for h in hosts] == [9100]
    assert_envoy_accepts(bootstrap, tmp_path)


def test_versus_listener_consults_a_second_epp_beside_the_reference(tmp_path: Path) -> None:
    """Two configurations of the EPP compared behind one Envoy: each side listener its own cluster."""
    options = EnvoyOptions(
        reference_epp_port=9100,
        reference_port=10003,
        versus_epp_port=9200,
        versus_port=10004,
        pool_eds_path=None,
    )
    bootstrap = render_bootstrap(options)
    listeners = {item["name"]: item for item in bootstrap["static_resources"]["listeners"]}
    assert list(listeners) == ["gateway", "reference", "versus"]
    assert listeners["versus"]["address"]["socket_address"]["port_value"] == 10004
    manager = listeners["versus"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert ext_proc_of(manager)["grpc_service"]["envoy_grpc"]["cluster_name"] == "epp_versus"
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    hosts = clusters["epp_versus"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [h["endpoint"]["address"]["socket_address"]["port_value"] for h in hosts] == [9200]
    assert "versus" not in {
        item["name"]
        for item in render_bootstrap(EnvoyOptions(pool_eds_path=None))["static_resources"]["listeners"]
    }
    assert_envoy_accepts(bootstrap, tmp_path)
