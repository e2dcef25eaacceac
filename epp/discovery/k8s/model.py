"""Kubernetes objects, as the API server's JSON, turned into what the EPP acts on: the pool's spec,
one endpoint per ready pod and target port, and the priority of each InferenceObjective. (The
model rewrites are in rewrites.py: the routing sidecar reads pools through this module and must
not pull in the request-control layer.)

Plain dicts rather than client model classes: pools and objectives are custom resources the client
has no models for, and treating pods the same way keeps one code path and skips a costly
deserialisation of every pod event."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from epp.datastore import EndpointSpec
from epp.datastore.endpoint import canonical_ip

log = logging.getLogger(__name__)

GROUP_V1 = "inference.networking.k8s.io"
GROUP_ALPHA = "inference.networking.x-k8s.io"
POOL_VERSIONS = {GROUP_V1: "v1", GROUP_ALPHA: "v1alpha2"}
OBJECTIVE_GROUP = GROUP_ALPHA
REWRITE_GROUP = GROUP_ALPHA
REWRITE_VERSION = "v1alpha2"
OBJECTIVE_VERSION = "v1alpha2"
ACTIVE_PORTS_ANNOTATION = "inference.networking.k8s.io/active-ports"
# The pool API allows this many data-parallel ranks (targetPorts entries) per pod.
MAX_TARGET_PORTS = 8

Object = dict[str, Any]


class PoolSpecError(ValueError):
    """The pool object cannot be served from (a field is missing or out of range)."""


class FailureMode(StrEnum):
    """What the gateway does when the EPP cannot answer. The gateway, not the EPP, enforces it."""

    FAIL_CLOSE = "FailClose"
    FAIL_OPEN = "FailOpen"


@dataclass(frozen=True)
class PoolRef:
    """Which InferencePool to follow. The group picks the API version: GA v1, or the older
    x-k8s v1alpha2 that GIE before v1.0 and many llm-d installs still create."""

    name: str
    namespace: str = "default"
    group: str = GROUP_V1

    def __post_init__(self) -> None:
        if self.group not in POOL_VERSIONS:
            raise ValueError(f"pool group must be one of {sorted(POOL_VERSIONS)}, not {self.group!r}")

    @property
    def version(self) -> str:
        return POOL_VERSIONS[self.group]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.group}/{self.version})"


@dataclass(frozen=True)
class PoolSpec:
    selector: Mapping[str, str]
    target_ports: tuple[int, ...]
    app_protocol: str = "http"
    failure_mode: FailureMode = FailureMode.FAIL_CLOSE
    endpoint_picker: str | None = None

    @property
    def label_selector(self) -> str:
        """The selector in the API's `labelSelector` query syntax (equality terms, ANDed)."""
        return ",".join(f"{key}={value}" for key, value in sorted(self.selector.items()))


# Kubernetes label syntax: an optional DNS-subdomain prefix and a name of up to 63 characters.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class SelectorRef:
    """GIE's standalone mode (--endpoint-selector, --endpoint-target-ports): the pods of a
    namespace matching a label selector, without an InferencePool. `name` stands for the pool in
    the EPP's own metrics (GIE: the EPP Deployment's name, from POD_NAME)."""

    selector: Mapping[str, str]
    target_ports: tuple[int, ...]
    namespace: str = "default"
    name: str = "standalone"

    @property
    def spec(self) -> PoolSpec:
        return PoolSpec(selector=self.selector, target_ports=self.target_ports)

    def __str__(self) -> str:
        return f"pods {self.namespace}/{self.spec.label_selector} on ports {list(self.target_ports)}"


def parse_label_selector(text: str) -> dict[str, str]:
    """`key=value[,key=value...]`, GIE's --endpoint-selector syntax (equality terms only)."""
    selector: dict[str, str] = {}
    for term in text.split(","):
        key, equals, value = term.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key or value.startswith("=") or not _valid_label_key(key):
            raise ValueError(f"{text!r}: expected key=value[,key=value...] with Kubernetes label keys")
        if not _LABEL_NAME.match(value):
            raise ValueError(f"{text!r}: {value!r} is not a valid label value")
        if key in selector and selector[key] != value:
            raise ValueError(f"{text!r}: {key!r} is given twice")
        selector[key] = value
    return selector


def _valid_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not _LABEL_PREFIX.match(prefix):
        return False
    return bool(name) and bool(_LABEL_NAME.match(name))


def parse_target_ports(values: Iterable[str]) -> tuple[int, ...]:
    """GIE's --endpoint-target-ports: comma-separated (or repeated) port numbers, 1 to 8 of them,
    duplicates dropped in order."""
    ports: list[int] = []
    for value in values:
        for part in value.split(","):
            try:
                port = int(part.strip())
            except ValueError:
                raise ValueError(f"--endpoint-target-ports: {part.strip()!r} is not a port number") from None
            if not 0 < port < 65536:
                raise ValueError(f"--endpoint-target-ports: {port} is not a port number")
            if port not in ports:
                ports.append(port)
    if not 0 < len(ports) <= MAX_TARGET_PORTS:
        raise ValueError(f"--endpoint-target-ports must give 1 to {MAX_TARGET_PORTS} ports, not {len(ports)}")
    return tuple(ports)


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise PoolSpecError(f"{where}: {value!r} is not a port number")
    return value


def _failure_mode(ref: Mapping[str, Any]) -> FailureMode:
    value = ref.get("failureMode") or FailureMode.FAIL_CLOSE
    try:
        return FailureMode(value)
    except ValueError:
        raise PoolSpecError(f"failureMode {value!r} is not FailClose or FailOpen") from None


def _selector(labels: Any, where: str) -> dict[str, str]:
    if not isinstance(labels, dict) or not labels:
        # An empty selector would select every pod in the namespace: never serve from that.
        raise PoolSpecError(f"{where} must be a non-empty map of labels")
    return {str(key): str(value) for key, value in labels.items()}


def parse_pool(obj: Object, group: str) -> PoolSpec:
    """The spec of an InferencePool object of the given API group."""
    spec = obj.get("spec") or {}
    if group == GROUP_ALPHA:
        # v1alpha2: `selector` is the label map itself, one `targetPortNumber`, `extensionRef`.
        ref = spec.get("extensionRef") or {}
        return PoolSpec(
            selector=_selector(spec.get("selector"), "spec.selector"),
            target_ports=(_port(spec.get("targetPortNumber"), "spec.targetPortNumber"),),
            failure_mode=_failure_mode(ref),
            endpoint_picker=ref.get("name"),
        )
    ref = spec.get("endpointPickerRef") or {}
    entries = spec.get("targetPorts") or []
    ports = tuple(
        _port(entry.get("number") if isinstance(entry, dict) else None, f"spec.targetPorts[{i}].number")
        for i, entry in enumerate(entries)
    )
    if not 0 < len(ports) <= MAX_TARGET_PORTS or len(set(ports)) != len(ports):
        raise PoolSpecError(f"spec.targetPorts must hold 1 to {MAX_TARGET_PORTS} distinct ports, not {ports}")
    return PoolSpec(
        selector=_selector((spec.get("selector") or {}).get("matchLabels"), "spec.selector.matchLabels"),
        target_ports=ports,
        app_protocol=spec.get("appProtocol") or "http",
        failure_mode=_failure_mode(ref),
        endpoint_picker=ref.get("name"),
    )


def _is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _active_ports(annotations: Mapping[str, str] | None, target_ports: tuple[int, ...]) -> set[int]:
    """The annotation narrows which target ports (ranks) of this pod take traffic; a missing or
    unparseable annotation leaves all of them active rather than silently dropping the pod."""
    value = (annotations or {}).get(ACTIVE_PORTS_ANNOTATION)
    if value is None:
        return set(target_ports)
    # ASCII digits, as GIE's Sscanf("%d") reads them: str.isdigit also takes "²", which int() refuses.
    parts = (part.strip() for part in value.split(","))
    active = {int(part) for part in parts if part.isascii() and part.isdigit()} & set(target_ports)
    if not active:
        log.warning(
            "ignoring %s=%r: names none of the pool's ports %s", ACTIVE_PORTS_ANNOTATION, value, target_ports
        )
        return set(target_ports)
    return active


def pod_endpoints(pod: Object, pool: PoolSpec, metrics_port: int | None = None) -> list[EndpointSpec]:
    """One endpoint per active target port of a pod that can take traffic now: it matches the
    selector, is Ready, has an IP and is not being deleted. Named `<pod>-rank-<i>` by port index,
    so a rank keeps its name (and its load accounting) while other ranks come and go.

    `metrics_port` (GIE's --model-server-metrics-port) is where a pool with a single target port
    is scraped; with several target ports each rank is scraped on its own port, as in GIE."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    labels: dict[str, str] = meta.get("labels") or {}
    address = status.get("podIP")
    if meta.get("deletionTimestamp") or not address or not _is_ready(status):
        return []
    if any(labels.get(key) != value for key, value in pool.selector.items()):
        return []
    try:
        # As Envoy writes it; and one address that is not an IP would make Envoy refuse the
        # whole EDS file (epp.discovery.eds), freezing its pool.
        address = canonical_ip(address)
    except ValueError:
        log.warning("pod %s: status.podIP %r is not an IP address; left out", meta.get("name"), address)
        return []
    active = _active_ports(meta.get("annotations"), pool.target_ports)
    frozen_labels = MappingProxyType(dict(labels))
    scrape_port = (metrics_port or None) if len(pool.target_ports) == 1 else None
    return [
        EndpointSpec(
            name=f"{meta['name']}-rank-{index}",
            address=address,
            port=port,
            labels=frozen_labels,
            metrics_port=scrape_port,
            namespace=meta.get("namespace", "default"),
        )
        for index, port in enumerate(pool.target_ports)
        if port in active
    ]


def pool_endpoints(
    pods: Iterable[Object], pool: PoolSpec, metrics_port: int | None = None
) -> list[EndpointSpec]:
    return [endpoint for pod in pods for endpoint in pod_endpoints(pod, pool, metrics_port)]


def objective_priorities(objectives: Iterable[Object], pool: PoolRef) -> dict[str, int]:
    """Priority by objective name, for the objectives whose poolRef names this pool (the request
    header `x-gateway-inference-objective` carries the name). Unset priority means 0."""
    priorities: dict[str, int] = {}
    for obj in objectives:
        spec = obj.get("spec") or {}
        ref = spec.get("poolRef") or {}
        if (
            ref.get("name") == pool.name
            and (ref.get("group") or GROUP_V1) == pool.group
            and (ref.get("kind") or "InferencePool") == "InferencePool"
        ):
            priority = spec.get("priority")
            priorities[obj["metadata"]["name"]] = priority if isinstance(priority, int) else 0
    return priorities
