"""Endpoint identity (from discovery) and its mutable state (from scraping and traffic)."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from epp.datastore.columns import COLUMN_FIELDS, allocate_row, write_row, write_rows
from epp.datastore.roles import ROLE_LABEL, stages_of

# The fallback group of an endpoint that names no models: it serves whatever it is sent.
ANY_MODEL_GROUP = "any"
# The fallback group of a request no other endpoint is known to serve: no host carries it.
NO_FALLBACK_GROUP = "none"


def canonical_ip(text: str) -> str:
    """An IP address in the one spelling endpoints are known, compared and sent to Envoy by:
    compressed lower-case IPv6 (as Envoy writes the host:port it names hosts by), and an
    IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, `::ffff:a00:1`) as the IPv4 address it maps
    (`10.0.0.1`). Both spellings reach the same host (a dual-stack socket connects to the mapped
    form over IPv4) and a pod's IP is given as IPv4, so the mapped one must not become a second
    endpoint, nor miss the allowlist entry or the served-endpoint header of the first. Raises
    ValueError for anything but an IP address."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and ip.scope_id is None:
        return str(ip.ipv4_mapped)
    return ip.compressed


def canonical_hostport(hostport: str) -> str:
    """`hostport` with its IP written as `canonical_ip` writes it; anything else unchanged (a
    name, a malformed value: compared as given)."""
    try:
        host, port = split_host_port(hostport)
        host = canonical_ip(host)
    except ValueError:
        return hostport
    return host if port is None else join_host_port(host, port)


def join_host_port(host: str, port: int) -> str:
    """`host:port`, bracketing IPv6 literals as Envoy and Go's JoinHostPort do."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def split_host_port(hostport: str) -> tuple[str, int | None]:
    """(host, port) from `host:port` or `[v6]:port`; a bare host or IPv6 address has no port.
    The port is None when absent; a malformed port raises ValueError."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if hostport.count(":") != 1:
        return hostport, None
    host, _, port = hostport.partition(":")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What discovery knows about one serving port: where it is and how it is labelled."""

    name: str
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    models: frozenset[str] = frozenset()
    metrics_port: int | None = None
    namespace: str = "default"
    # The request stages its role serves (roles.stages_of), worked out once per spec: flow
    # control splits the pool by them at every saturation reading.
    stages: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", stages_of(self.labels.get(ROLE_LABEL)))

    @property
    def hostport(self) -> str:
        return join_host_port(self.address, self.port)

    @property
    def metrics_hostport(self) -> str:
        return join_host_port(self.address, self.metrics_port or self.port)


@dataclass(slots=True, eq=False)
class EndpointMetrics:
    """Model-server state in engine-neutral terms, replaced wholesale on every scrape."""

    # Rows (in epp.datastore.columns) of the endpoints this object is the metrics of.
    column_rows: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)
    waiting_queue_size: int = 0
    running_requests_size: int = 0
    kv_cache_usage: float = 0.0
    active_models: frozenset[str] = frozenset()
    waiting_models: frozenset[str] = frozenset()
    max_active_models: int = 0
    cache_block_size: int = 0
    cache_num_blocks: int = 0
    update_time: float = 0.0
    # Engine-specific scalars a core-metrics-extractor `customMetrics` entry names (attribute key ->
    # value); what llm-d's endpoint-attribute filter and scorer read.
    scalars: dict[str, float] = field(default_factory=dict)

    def age(self, now: float | None = None) -> float:
        """Seconds since the last successful scrape; infinite when never scraped."""
        if self.update_time == 0.0:
            return float("inf")
        return (time.monotonic() if now is None else now) - self.update_time

    def __eq__(self, other: object) -> bool:
        """Field by field, as a dataclass compares, whether or not either is attached."""
        if not isinstance(other, EndpointMetrics):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _COMPARED)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass default


class _AttachedEndpointMetrics(EndpointMetrics):
    """An `EndpointMetrics` some endpoint holds: setting a column field in place also writes its
    endpoints' column rows. Objects switch to this class when first attached, so building one
    (a scrape sets a dozen fields) pays nothing for it."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        _set(self, name, value)
        if name in COLUMN_FIELDS and self.column_rows:
            write_rows(self.column_rows, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        """Copies and pickles are plain, unattached metrics with the same fields."""
        return (_unattached, ({f: getattr(self, f) for f in _INIT_FIELDS},))


def _unattached(values: dict[str, Any]) -> EndpointMetrics:
    return EndpointMetrics(**values)


_COMPARED = tuple(f.name for f in fields(EndpointMetrics) if f.compare)
_INIT_FIELDS = tuple(f.name for f in fields(EndpointMetrics) if f.init)
_set = object.__setattr__


class Endpoint:
    """One schedulable target. Identity is fixed; metrics, health and load change over time."""

    __slots__ = (
        "column_row",
        "healthy",
        "hostport",
        "inflight_requests",
        "inflight_tokens",
        "metrics",
        "name",
        "ref",
        "scrape_overdue",
        "served_models",
        "spec",
        "suspended_until",
    )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "metrics":
            self._attach(value)
        _set(self, name, value)

    def _attach(self, metrics: EndpointMetrics) -> None:
        """This endpoint's column row follows `metrics` from now on, and no longer the object it
        replaces (which another endpoint may still hold). Once per scrape: kept short."""
        row = self.column_row
        previous: EndpointMetrics | None = getattr(self, "metrics", None)
        if previous is not None and previous is not metrics:
            held = previous.column_rows
            _set(previous, "column_rows", () if held == (row,) else tuple(r for r in held if r != row))
        held = metrics.column_rows
        if not held:
            _set(metrics, "column_rows", (row,))
            if type(metrics) is EndpointMetrics:
                _set(metrics, "__class__", _AttachedEndpointMetrics)
        elif row not in held:
            _set(metrics, "column_rows", (*held, row))
        write_row(row, metrics.waiting_queue_size, metrics.kv_cache_usage)

    def __init__(self, spec: EndpointSpec) -> None:
        self.column_row = allocate_row()
        self.spec = spec
        # Fixed for the endpoint's life (a new address is a new Endpoint) and read per candidate
        # per request (decision records, destinations): plain attributes, not properties.
        self.name = spec.name
        self.hostport = spec.hostport
        # (name, host:port), as decision records keep each candidate scored: one tuple for the
        # endpoint's life instead of one a candidate a request (and its collection).
        self.ref = (spec.name, spec.hostport)
        self.metrics = EndpointMetrics()
        # `healthy` follows the metrics scraper; `suspended_until` (monotonic seconds) is a short
        # quarantine after the data plane reported the endpoint unreachable.
        self.healthy = True
        self.suspended_until = 0.0
        # The scraper's GET has gone unanswered for several intervals (a hung server): its
        # metrics are stale, so it is chosen only when nothing else is ready.
        self.scrape_overdue = False
        self.inflight_requests = 0
        self.inflight_tokens = 0
        # What the server's own model list (`/v1/models`, read by a models-data-source) names:
        # base model and adapters. None: nobody reads it.
        self.served_models: frozenset[str] | None = None

    @property
    def address(self) -> str:
        return self.spec.address

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def labels(self) -> Mapping[str, str]:
        return self.spec.labels

    @property
    def role(self) -> str | None:
        return self.spec.labels.get(ROLE_LABEL)

    def serves(self, model: str) -> bool:
        """True when neither discovery nor the server's model list names any models (it serves
        whatever it is sent), or either names this one, or it runs it as a LoRA adapter now."""
        listed, reported = self.spec.models, self.served_models
        if not listed and reported is None:
            return True
        if model in listed or model in self.metrics.active_models:
            return True
        return reported is not None and model in reported

    @property
    def fallback_group(self) -> str:
        """Which endpoints may stand in for this one once the gateway's retries have used up the
        EPP's list (`epp.discovery.eds`): those naming the same models, by discovery and by their
        own model list (`any` for those naming none). Read once per routed request: cached."""
        return fallback_group(self.spec.models, self.served_models)

    def fallback_group_for(self, model: str | None) -> str:
        """The fallback group of a request for `model` routed here: this endpoint's, unless it
        serves the model only as a LoRA adapter it runs now (`serves`), which the others of its
        group need not have loaded; then none, and no retry past the EPP's list."""
        group = self.fallback_group
        if not model or group == ANY_MODEL_GROUP or model in self.spec.models:
            return group
        return group if model in (self.served_models or ()) else NO_FALLBACK_GROUP

    def __repr__(self) -> str:
        return f"Endpoint({self.name}@{self.hostport})"


@functools.lru_cache(maxsize=1024)
def fallback_group(listed: frozenset[str], reported: frozenset[str] | None) -> str:
    """The group of an endpoint whose discovery names `listed` and whose own model list (None:
    not read) names `reported`."""
    if not listed and reported is None:
        return ANY_MODEL_GROUP
    names = "\n".join(sorted(listed | (reported or frozenset())))
    return "models-" + hashlib.blake2b(names.encode(), digest_size=8).hexdigest()
