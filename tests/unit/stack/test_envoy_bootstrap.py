"""The generated Envoy bootstrap: modes, failure handling, and Envoy's own validation of it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.stack.envoy import EnvoyOptions, render_bootstrap
from epp.stack.stack import envoy_binary


def ext_proc_config(bootstrap: dict[str, Any]) -> dict[str, Any]:
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}
    return filters["envoy.filters.http.ext_proc"]


def test_full_duplex_is_gies_contract() -> None:
    config = ext_proc_config(render_bootstrap(EnvoyOptions(body_mode="full-duplex")))
    assert config["processing_mode"]["request_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert config["processing_mode"]["response_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert config["processing_mode"]["request_trailer_mode"] == "SEND"
    assert config["failure_mode_allow"] is False
    assert config["metadata_options"]["receiving_namespaces"]["untyped"] == ["envoy.lb"]


def test_pool_cluster_keys_on_metadata_not_on_the_forgeable_header() -> None:
    clusters = {c["name"]: c for c in render_bootstrap(EnvoyOptions())["static_resources"]["clusters"]}
    lb = clusters["pool"]["original_dst_lb_config"]
    assert lb == {"metadata_key": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}


def test_fail_open_needs_buffered_mode_and_fallback_endpoints() -> None:
    with pytest.raises(ValueError, match="use body mode 'buffered' for fail-open"):
        EnvoyOptions(body_mode="full-duplex", failure_mode="open", fallback_endpoints=("a:1",))
    with pytest.raises(ValueError, match="needs fallback_endpoints"):
        render_bootstrap(EnvoyOptions(body_mode="buffered", failure_mode="open"))
    with pytest.raises(ValueError, match="body_mode must be one of"):
        EnvoyOptions(body_mode="streamed")
    open_config = render_bootstrap(
        EnvoyOptions(body_mode="buffered", failure_mode="open", fallback_endpoints=("127.0.0.1:8000",))
    )
    assert ext_proc_config(open_config)["failure_mode_allow"] is True
    names = [c["name"] for c in open_config["static_resources"]["clusters"]]
    assert names == ["epp", "pool", "pool_fallback"]


@pytest.mark.parametrize(
    "options",
    [
        EnvoyOptions(),
        EnvoyOptions(body_mode="buffered", epp_tls=True),
        EnvoyOptions(
            body_mode="buffered", failure_mode="open", fallback_endpoints=("127.0.0.1:8000", "[::1]:8001")
        ),
    ],
)
def test_envoy_accepts_every_variant(options: EnvoyOptions, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(render_bootstrap(options)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_buffered_is_the_default_and_lets_the_epp_skip_streamed_bodies() -> None:
    config = ext_proc_config(render_bootstrap(EnvoyOptions()))
    assert config["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert config["processing_mode"]["response_body_mode"] == "STREAMED"
    assert config["allow_mode_override"] is True
