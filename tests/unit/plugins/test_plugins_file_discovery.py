"""file-discovery (llm-d router v0.9+): endpoints from a file named by dataLayer.discovery, read
the way llm-d reads it, and `epp serve` following it instead of Kubernetes or flags."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import orjson
import pytest

from epp import serve
from epp.cli import parse_args
from epp.config.loader import load_config
from epp.discovery.static import DiscoveryError
from epp.params.strict import ConfigError
from epp.plugins.file_discovery import FileDiscovery
from epp.stack.processes import wait_until
from tests.unit.plugin_helpers import plugin

TWO = """\
endpoints:
  - name: vllm-0
    address: "10.0.0.1"
    port: "8000"
    labels:
      model: llama-3-8b
  - name: vllm-1
    namespace: inference
    address: "10.0.0.2"
    port: "8001"
"""


def parse(text: str) -> tuple[list[tuple[str, str, str, int, dict[str, str]]], list[str]]:
    specs, problems = plugin(FileDiscovery, {"path": "/e.yaml"}).parse_endpoints(text, "e.yaml")
    return [(s.name, s.namespace, s.address, s.port, dict(s.labels)) for s in specs], problems


def test_entries_become_endpoints_in_the_default_namespace_unless_given() -> None:
    assert parse(TWO) == (
        [
            ("vllm-0", "default", "10.0.0.1", 8000, {"model": "llama-3-8b"}),
            ("vllm-1", "inference", "10.0.0.2", 8001, {}),
        ],
        [],
    )


def test_json_files_read_the_same() -> None:
    text = json.dumps({"endpoints": [{"name": "a", "address": "10.0.0.1", "port": "80"}]})
    assert parse(text) == ([("a", "default", "10.0.0.1", 80, {})], [])


def test_bad_entries_are_left_out_each_with_its_problem() -> None:
    text = """\
endpoints:
  - {name: ok, address: "10.0.0.1", port: "8000"}
  - {name: host, address: "vllm.local", port: "8000"}
  - {name: six, address: "::1", port: "8000"}
  - {name: high, address: "10.0.0.3", port: "99999"}
  - {name: word, address: "10.0.0.3", port: "http"}
  - {address: "10.0.0.4", port: "8000"}
"""
    specs, problems = parse(text)
    assert [s[0] for s in specs] == ["ok"]
    assert problems == [
        "e.yaml: endpoint \"host\": invalid IPv4 address 'vllm.local'",
        "e.yaml: endpoint \"six\": invalid IPv4 address '::1'",
        'e.yaml: endpoint "high": invalid port \'99999\' (a string holding 1-65535, such as "8000")',
        'e.yaml: endpoint "word": invalid port \'http\' (a string holding 1-65535, such as "8000")',
        "e.yaml: endpoint null: name is required",
    ]


@pytest.mark.parametrize(
    "port",
    ["\u00b2", "\uff18\uff10\uff10\uff10", "\u0668\u0660\u0660\u0660"],
    ids=["²", "fullwidth 8000", "arabic-indic 8000"],
)
def test_a_port_of_digits_other_than_ascii_is_a_problem_naming_the_entry(port: str) -> None:
    """llm-d reads the port with Go's strconv.Atoi, which takes ASCII digits only. `str.isdigit`
    let these through: fullwidth "8000" became port 8000, and "²" made int() raise, so the EPP stopped
    with "invalid literal for int() with base 10: '²'", naming neither the file nor the entry."""
    specs, problems = parse(f'endpoints:\n  - {{name: a, address: "10.0.0.1", port: "{port}"}}\n')
    assert specs == []
    assert problems == [
        f'e.yaml: endpoint "a": invalid port {port!r} (a string holding 1-65535, such as "8000")'
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "endpoints:\n  - {name: a, address: 10.0.0.1, port: 8000}\n",
            "port must be a string (quote it), not 8000",
        ),
        ("endpoints: 3\n", "`endpoints` must be a list of entries"),
        ("endpoints: [\n", "not YAML or JSON"),
        (
            "endpoints:\n  - {name: a, address: 10.0.0.1, port: '1', labels: {n: 1}}\n",
            "labels must map names",
        ),
        (
            "endpoints:\n  - {name: a, address: 10.0.0.1, port: '1', labels: {~: x}}\n",
            "labels must map names",
        ),
        ("#" * (1 << 20) + "\n", "exceeds the 1 MiB limit"),
    ],
)
def test_a_file_that_cannot_be_read_as_llm_d_reads_it_is_refused_whole(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(text)


def test_label_names_yaml_reads_as_numbers_or_booleans_are_their_text() -> None:
    """`labels: {8000: x, true: y}`: YAML reads those names as an int and a bool, which llm-d's
    YAML-to-JSON step writes as "8000" and "true". They were kept as an int and a bool: every
    `/api/endpoints` read and live-view update then failed (orjson: "Dict key must be str"), a bare
    500 from the metrics port for as long as the file named them."""
    text = "endpoints:\n  - {name: a, address: 10.0.0.1, port: '80', labels: {8000: x, true: y, z: w}}\n"
    specs, problems = plugin(FileDiscovery, {"path": "/e.yaml"}).parse_endpoints(text, "e.yaml")
    assert problems == []
    assert dict(specs[0].labels) == {"8000": "x", "true": "y", "z": "w"}
    assert orjson.loads(orjson.dumps(dict(specs[0].labels))) == {"8000": "x", "true": "y", "z": "w"}


def test_the_last_entry_of_a_name_counts_and_namespaces_keep_names_apart() -> None:
    text = """\
endpoints:
  - {name: a, address: "10.0.0.1", port: "8000"}
  - {name: b, address: "10.0.0.2", port: "8000"}
  - {name: a, address: "10.0.0.9", port: "9000"}
  - {name: b, namespace: other, address: "10.0.0.3", port: "8000"}
"""
    specs, _ = parse(text)
    assert [(name, address, port) for name, _, address, port, _ in specs] == [
        ("default/b", "10.0.0.2", 8000),
        ("a", "10.0.0.9", 9000),
        ("other/b", "10.0.0.3", 8000),
    ]


def test_path_is_required() -> None:
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters\.path: Field required"):
        load_config(config("").replace("      path: \n", ""))


def config(path: str, watch: bool = True) -> str:
    return f"""\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - name: file-disc
    type: file-discovery
    parameters:
      path: {path}
      watchFile: {str(watch).lower()}
  - type: queue-scorer
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: queue-scorer
dataLayer:
  discovery:
    pluginRef: file-disc
"""


def test_discovery_must_name_a_discovery_plugin() -> None:
    bad = config("/e.yaml").replace("pluginRef: file-disc", "pluginRef: queue-scorer")
    message = "dataLayer.discovery.pluginRef: plugin 'queue-scorer' is a queue-scorer"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(bad)


def test_the_metrics_source_is_injected_as_the_router_does() -> None:
    loaded = load_config(config("/e.yaml"))
    assert loaded.discovery == "file-disc"
    assert loaded.metrics_source == "metrics-data-source"
    assert loaded.metrics_extractor == "core-metrics-extractor"
    off = load_config(config("/e.yaml") + "  injectDefaults: false\n")
    assert off.metrics_source is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("peerDiscovery", "\n    pluginRef: peers"), ("crossReplicaSyncerPluginRef", " syncer")],
)
def test_peer_discovery_and_cross_replica_sync_are_refused_naming_them(key: str, value: str) -> None:
    text = config("/e.yaml") + f"  {key}:{value}\n"
    with pytest.raises(ConfigError, match=f"dataLayer.{key}.*llm-d's router registers no such type"):
        load_config(text)


def test_a_sync_interval_alone_is_accepted() -> None:
    assert load_config(config("/e.yaml") + "  crossReplicaSyncInterval: 500ms\n").discovery == "file-disc"


def options(tmp_path: Path, *argv: str, watch: bool = True) -> serve.ServeOptions:
    conf = tmp_path / "config.yaml"
    conf.write_text(config(str(tmp_path / "endpoints.yaml"), watch))
    base = ["--host=127.0.0.1", "--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0"]
    argv = (*base, "--secure-serving=false", "--drain-timeout=0s", f"--config-file={conf}", *argv)
    return serve.options_from_args(parse_args(list(argv)))


async def test_serve_follows_the_file_without_kubernetes(tmp_path: Path) -> None:
    (tmp_path / "endpoints.yaml").write_text(TWO)
    opts = options(tmp_path)
    assert (opts.pool, opts.selector, opts.pool_name) == (None, None, "epp")
    picker = serve.EndpointPicker(opts)
    await picker.start()
    try:
        hostports = sorted(e.spec.hostport for e in picker.datastore.endpoints())
        assert hostports == ["10.0.0.1:8000", "10.0.0.2:8001"]
        await asyncio.sleep(0.05)  # a new mtime
        (tmp_path / "endpoints.yaml").write_text(TWO.split("  - name: vllm-1")[0])

        async def reloaded() -> bool | None:
            return True if len(picker.datastore.endpoints()) == 1 else None

        await wait_until(reloaded, "the endpoint file's reload", 5, interval=0.05)
    finally:
        await picker.stop()


def test_pool_name_only_names_the_pool(tmp_path: Path) -> None:
    (tmp_path / "endpoints.yaml").write_text(TWO)
    opts = options(tmp_path, "--pool-name=slurm-job-42")
    assert (opts.pool, opts.pool_name) == (None, "slurm-job-42")


async def test_a_bad_entry_at_start_stops_the_epp_naming_it(tmp_path: Path) -> None:
    (tmp_path / "endpoints.yaml").write_text(TWO.replace('"8001"', '"0"'))
    picker = serve.EndpointPicker(options(tmp_path, watch=False))
    with pytest.raises(DiscoveryError, match="endpoint \"vllm-1\": invalid port '0'"):
        await picker.start()
    await picker.stop()


def test_other_endpoint_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^--endpoint: the config's dataLayer.discovery \(file-disc\)"):
        options(tmp_path, "--endpoint=10.0.0.1:8000")
