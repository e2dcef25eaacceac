"""The pool as an Envoy EDS file, kept current from the datastore (`epp serve --envoy-eds-file`).

GIE's fallback contract (`x-gateway-destination-endpoint: primary,fallback,...`) needs an Envoy
cluster whose hosts are the pool: Envoy's override-host load-balancing policy picks only among a
cluster's own hosts (ORIGINAL_DST takes one address). Whatever discovers the endpoints (a file,
flags, an InferencePool), the EPP knows the pool, so it writes it where a file-based EDS cluster
reads it (`path_config_source` + `watched_directory`: the file is replaced by a rename in its
directory, which Envoy watches). Prefill-only endpoints are left out: a client's request must never
land on one, not even through the policy's fallback.

Once a request's retries have used up the EPP's list, our bootstrap's fallback picks round robin
among the hosts that are HEALTHY here and in the routed request's fallback group (the models its
primary serves, `Endpoint.fallback_group`, also in the request's envoy.lb metadata). So each host
carries its group, and its health as the EPP sees it: an endpoint out of rotation (its scrapes
failing, or suspended after the data plane found it unreachable) is UNHEALTHY, and a server of
other models is in another group; neither is a retry target. The EPP's own list is followed as
it is (Envoy's override-host policy does not check health)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from epp.datastore import Datastore, Endpoint
from epp.datastore.endpoint import split_host_port
from epp.headers import FALLBACK_GROUP_KEY, LB_NAMESPACE
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

POOL_CLUSTER = "pool"
PREFILL_ROLE = "prefill"
# How often health and fallback groups are compared with the file written last (endpoints that
# come or go are written at once): a scrape interval or two, so Envoy's retries stop reaching an
# endpoint about as soon as the EPP stops routing to it.
REFRESH_SECONDS = 0.1


class EdsHost(NamedTuple):
    """One host of the pool as Envoy should see it."""

    hostport: str
    healthy: bool = True
    group: str = "any"


def eds_document(
    hosts: Sequence[EdsHost | str], version: str = "1", cluster: str = POOL_CLUSTER
) -> dict[str, Any]:
    """The hosts (or bare host:ports: healthy, group `any`) as the DiscoveryResponse (one
    ClusterLoadAssignment) Envoy reads."""
    lb_endpoints = [_lb_endpoint(EdsHost(item) if isinstance(item, str) else item) for item in hosts]
    assignment = {
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
    }
    return {"version_info": version, "resources": [assignment]}


@functools.lru_cache(maxsize=16384)
def _lb_endpoint(host: EdsHost) -> dict[str, Any]:
    """One host's entry, built once per state (only serialized, never changed): a file of 5,000
    hosts, rewritten when one of them changes health, costs the serialization alone."""
    address, port = split_host_port(host.hostport)
    if port is None:
        raise ValueError(f"pool endpoint {host.hostport!r} needs a port")
    return {
        "endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}},
        "health_status": "HEALTHY" if host.healthy else "UNHEALTHY",
        "metadata": {"filter_metadata": {LB_NAMESPACE: {FALLBACK_GROUP_KEY: host.group}}},
    }


def write_eds_file(
    path: Path, hosts: Sequence[EdsHost | str], version: str, cluster: str = POOL_CLUSTER
) -> None:
    """Write by rename, so Envoy's directory watch never reads half a file. As compact JSON, which
    is also YAML (Envoy reads a `.yaml` path as YAML): the file is written on the event loop
    whenever an endpoint's health changes, and for 1,000 hosts PyYAML's emitter took 1.65 s, this
    whole write 1.3 ms (on the loaded 2-core machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(eds_document(hosts, version, cluster)))
    tmp.replace(path)


def serving_hosts(endpoints: Iterable[Endpoint], now: float | None = None) -> list[EdsHost]:
    """Every endpoint a request may be sent to, with its health as the EPP sees it at `now`
    (monotonic) and its fallback group, sorted."""
    now = time.monotonic() if now is None else now
    hosts = {
        e.hostport: EdsHost(e.hostport, e.healthy and e.suspended_until <= now, e.fallback_group)
        for e in endpoints
        if e.role != PREFILL_ROLE
    }
    return [hosts[hostport] for hostport in sorted(hosts)]


class EdsFileWriter:
    """Rewrites the EDS file when endpoints come or go (bursts, a pool listed at once, are written
    once, on the next turn of the event loop) and when an endpoint's health or fallback group
    changes (checked every `refresh` seconds). `start` writes the current pool before returning,
    so Envoy can be started (it refuses a missing file) as soon as the EPP is up."""

    def __init__(
        self, datastore: Datastore, path: Path, cluster: str = POOL_CLUSTER, refresh: float = REFRESH_SECONDS
    ) -> None:
        self._datastore = datastore
        self.path = path
        self._cluster = cluster
        self._refresh = refresh
        self._version = 0
        self._written: list[EdsHost] | None = None
        self._inputs: tuple[object, ...] = ()
        self._failing = False  # the last write failed: retried at each refresh, logged once
        self._pending: asyncio.Handle | None = None
        self._refreshing: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.write()
        self._datastore.subscribe(on_added=self._changed, on_removed=self._changed)
        with contextlib.suppress(RuntimeError):  # no running loop: written on changes only
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_forever(), name="eds")

    async def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        refreshing, self._refreshing = self._refreshing, None
        await cancel_and_wait(refreshing)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            self.write()

    def _changed(self, _: Endpoint) -> None:
        if self._pending is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next write catches up
                self._pending = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._pending = None
        self.write()

    def write(self) -> None:
        endpoints, now = self._datastore.endpoints(), time.monotonic()
        # What the file depends on, cheap to compare (the same objects, unless something changed):
        # the hosts are rebuilt only then. At 1,000 endpoints, rebuilding them cost about 1 ms.
        inputs = (
            endpoints,
            [e.healthy and e.suspended_until <= now for e in endpoints],
            [e.spec for e in endpoints],
            [e.served_models for e in endpoints],
        )
        if inputs == self._inputs:
            return
        self._inputs = inputs
        hosts = serving_hosts(endpoints, now)
        if hosts == self._written:
            return
        self._version += 1
        try:
            write_eds_file(self.path, hosts, str(self._version), self._cluster)
        except OSError as exc:
            self._inputs = ()  # not written: the next refresh tries again
            log.log(
                logging.DEBUG if self._failing else logging.ERROR,
                "could not write the Envoy EDS file %s: %s (retried every %gs)",
                self.path,
                exc,
                self._refresh,
            )
            self._failing = True
            return
        if self._failing:
            self._failing = False
            log.info("Envoy EDS file %s written again", self.path)
        written, self._written = self._written, hosts
        # Endpoints coming and going are news; health changes are the scraper's to log.
        same_pool = written is not None and [h.hostport for h in written] == [h.hostport for h in hosts]
        healthy = sum(host.healthy for host in hosts)
        log.log(
            logging.DEBUG if same_pool else logging.INFO,
            "Envoy EDS file %s: %d endpoints, %d healthy (version %d)",
            self.path,
            len(hosts),
            healthy,
            self._version,
        )
