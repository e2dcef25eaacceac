"""`file-discovery` (llm-d router v0.9+): the endpoints come from a YAML or JSON file instead of
Kubernetes, when `dataLayer.discovery.pluginRef` names this plugin; the EPP then needs no API
server, and `--pool-name` (default `epp`) only names the pool.

The file, as llm-d reads it:

    endpoints:
      - name: vllm-0          # required
        namespace: inference  # optional, default "default"
        address: "10.0.0.1"   # required, a literal IPv4 address
        port: "8000"          # required, a string holding 1-65535
        labels: {rank: "0"}   # optional

Metrics are scraped from the same address and port. At most 1 MiB. An entry with a bad address
or port is left out with a problem each (at start, any problem stops the EPP, as the router's
first load fails); of entries with the same namespace and name, the last one counts."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import Field

from epp.compiled import safe_yaml
from epp.datalayer import EndpointDiscovery
from epp.datastore import EndpointSpec
from epp.framework import Plugin, PluginContext, PluginParams, register

MAX_FILE_BYTES = 1 << 20


class FileDiscoveryParams(PluginParams):
    path: str = Field(min_length=1)
    watch_file: bool = False


def _entry_problem(entry: dict[str, Any]) -> str | None:
    if not entry.get("name"):
        return "name is required"
    try:
        ipaddress.IPv4Address(str(entry.get("address", "")))
    except ValueError:
        return f"invalid IPv4 address {entry.get('address')!r}"
    port = entry.get("port")
    # ASCII digits only, as Go's strconv.Atoi reads them (str.isdigit also takes fullwidth ones, "²")
    if not isinstance(port, str) or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f'invalid port {port!r} (a string holding 1-65535, such as "8000")'
    return None


def _entries(text: str, source: str) -> list[dict[str, Any]]:
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ValueError(f"{source}: endpoints file exceeds the 1 MiB limit")
    try:
        data = safe_yaml(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not YAML or JSON: {exc}") from None
    endpoints = data.get("endpoints") if isinstance(data, dict) else None
    if endpoints is None:
        endpoints = []
    if not isinstance(endpoints, list) or not all(isinstance(e, dict) for e in endpoints):
        raise ValueError(f"{source}: `endpoints` must be a list of entries")
    for entry in endpoints:
        _check_types(entry, source)
    return endpoints


def _check_types(entry: dict[str, Any], source: str) -> None:
    """As llm-d decodes the file (JSON into string fields): a wrong type fails the whole file."""
    where = f"{source}: endpoint {json.dumps(entry.get('name'))}"
    for key in ("name", "namespace", "address", "port"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a string (quote it), not {value!r}")
    labels = entry.get("labels")
    if labels is not None and not (
        isinstance(labels, dict)
        and all(isinstance(k, str | int) and isinstance(v, str) for k, v in labels.items())
    ):
        raise ValueError(f"{where}: labels must map names to strings")


def _label_name(name: str | int) -> str:
    """A label name YAML read as a number or a boolean (`1:`, `true:`) as llm-d's YAML-to-JSON step
    writes it: "1", "true"."""
    if isinstance(name, bool):
        return "true" if name else "false"
    return str(name)


@register
class FileDiscovery(Plugin, EndpointDiscovery):
    type_name = "file-discovery"
    Params = FileDiscoveryParams

    def __init__(self, name: str, params: FileDiscoveryParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.endpoints_file = Path(params.path)
        self.watch_file = params.watch_file

    def parse_endpoints(self, text: str, source: str) -> tuple[list[EndpointSpec], list[str]]:
        found: dict[tuple[str, str], EndpointSpec] = {}
        problems = []
        for entry in _entries(text, source):
            problem = _entry_problem(entry)
            if problem is not None:
                problems.append(f"{source}: endpoint {json.dumps(entry.get('name'))}: {problem}")
                continue
            namespace = entry.get("namespace") or "default"
            name = entry.get("name") or ""
            found.pop((namespace, name), None)  # the last of the same name counts, in its place
            found[(namespace, name)] = EndpointSpec(
                name=name,
                namespace=namespace,
                address=entry["address"],
                port=int(entry["port"]),
                labels=MappingProxyType({_label_name(k): v for k, v in (entry.get("labels") or {}).items()}),
            )
        return _unique_names(list(found.values())), problems


def _unique_names(specs: list[EndpointSpec]) -> list[EndpointSpec]:
    """The datastore knows endpoints by name: one name in several namespaces becomes
    `namespace/name` for each of them."""
    uses = Counter(spec.name for spec in specs)
    return [
        spec if uses[spec.name] == 1 else replace(spec, name=f"{spec.namespace}/{spec.name}")
        for spec in specs
    ]
