"""The pool as an Envoy EDS file, kept current from the datastore (`epp serve --envoy-eds-file`).

GIE's fallback contract (`x-gateway-destination-endpoint: primary,fallback,...`) needs an Envoy
cluster whose hosts are the pool: Envoy's override-host load-balancing policy picks only among a
cluster's own hosts (ORIGINAL_DST takes one address). Whatever discovers the endpoints (a file,
flags, an InferencePool), the EPP knows the pool, so it writes it where a file-based EDS cluster
reads it (`path_config_source` + `watched_directory`: the file is replaced by a rename in its
directory, which Envoy watches). Prefill-only endpoints are left out: a client's request must never
land on one, not even through the policy's round-robin fallback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from epp.datastore import Datastore, Endpoint
from epp.datastore.endpoint import split_host_port

log = logging.getLogger(__name__)

POOL_CLUSTER = "pool"
PREFILL_ROLE = "prefill"


def eds_document(endpoints: Sequence[str], version: str = "1", cluster: str = POOL_CLUSTER) -> dict[str, Any]:
    """The host:port list as the DiscoveryResponse (one ClusterLoadAssignment) Envoy reads."""
    lb_endpoints = []
    for hostport in endpoints:
        host, port = split_host_port(hostport)
        if port is None:
            raise ValueError(f"pool endpoint {hostport!r} needs a port")
        address = {"socket_address": {"address": host, "port_value": port}}
        lb_endpoints.append({"endpoint": {"address": address}})
    assignment = {
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
    }
    return {"version_info": version, "resources": [assignment]}


def write_eds_file(path: Path, endpoints: Sequence[str], version: str, cluster: str = POOL_CLUSTER) -> None:
    """Write by rename, so Envoy's directory watch never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(eds_document(endpoints, version, cluster), sort_keys=False))
    tmp.replace(path)


def serving_hostports(endpoints: Iterable[Endpoint]) -> list[str]:
    """Every endpoint a request may be sent to, healthy or not (the EPP decides that), sorted."""
    return sorted({e.hostport for e in endpoints if e.role != PREFILL_ROLE})


class EdsFileWriter:
    """Rewrites the EDS file when endpoints come or go; bursts (a pool listed at once) are written
    once, on the next turn of the event loop. `start` writes the current pool before returning, so
    Envoy can be started (it refuses a missing file) as soon as the EPP is up."""

    def __init__(self, datastore: Datastore, path: Path, cluster: str = POOL_CLUSTER) -> None:
        self._datastore = datastore
        self.path = path
        self._cluster = cluster
        self._version = 0
        self._written: list[str] | None = None
        self._pending: asyncio.Handle | None = None

    def start(self) -> None:
        self.write()
        self._datastore.subscribe(on_added=self._changed, on_removed=self._changed)

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _changed(self, _: Endpoint) -> None:
        if self._pending is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next write catches up
                self._pending = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._pending = None
        self.write()

    def write(self) -> None:
        hostports = serving_hostports(self._datastore.endpoints())
        if hostports == self._written:
            return
        self._version += 1
        try:
            write_eds_file(self.path, hostports, str(self._version), self._cluster)
        except OSError as exc:
            log.error("could not write the Envoy EDS file %s: %s", self.path, exc)
            return
        self._written = hostports
        log.info("Envoy EDS file %s: %d endpoints (version %d)", self.path, len(hostports), self._version)
