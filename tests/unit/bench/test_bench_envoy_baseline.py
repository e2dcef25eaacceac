"""The benchmark's "no EPP" baseline: a second Envoy listener, round-robin, no ext_proc."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.stack.envoy import EnvoyOptions, render_bootstrap
from epp.stack.stack import envoy_binary

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
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    validated = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_no_baseline_listener_by_default_and_none_without_endpoints() -> None:
    assert len(render_bootstrap(EnvoyOptions())["static_resources"]["listeners"]) == 1
    with pytest.raises(ValueError, match="baseline listener needs fallback_endpoints"):
        render_bootstrap(EnvoyOptions(baseline_port=10002))
