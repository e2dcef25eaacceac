"""Follow one InferencePool and the pods its selector matches, and report the pool's endpoints
whenever they may have changed. Shared by the EPP (endpoints into its datastore) and the routing
sidecar (its SSRF allowlist), so both see the pool the same way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kubernetes_asyncio.client import ApiClient

from epp.datastore import EndpointSpec
from epp.discovery.k8s.client import pod_lister, pool_lister
from epp.discovery.k8s.model import PoolRef, PoolSpec, PoolSpecError, parse_pool, pool_endpoints
from epp.discovery.k8s.reflector import Reflector, WatchTiming

log = logging.getLogger(__name__)

# (pool spec or None while the pool is absent or unusable, its endpoints)
EndpointsCallback = Callable[[PoolSpec | None, list[EndpointSpec]], None]


class PoolWatch:
    """Reports `(spec, endpoints)` once the pool and its pods have been listed, then after every
    change; `(None, [])` while the pool does not exist or its spec cannot be served. A selector
    change re-lists the pods under the new selector (the old pods are kept until that list is in,
    so traffic keeps flowing); a targetPorts change re-derives the endpoints from the pods held."""

    def __init__(
        self,
        api: ApiClient,
        ref: PoolRef,
        on_endpoints: EndpointsCallback,
        timing: WatchTiming | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.ref = ref
        self.pool: PoolSpec | None = None
        self._api = api
        self._on_endpoints = on_endpoints
        self._timing = timing or WatchTiming()
        self._metrics_port = metrics_port
        self._pods: Reflector | None = None
        self._pods_task: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        """Until cancelled. The pod watch runs in the same task group, so a bug in either ends
        both and surfaces here instead of leaving a silently stale endpoint set."""
        pools = Reflector(
            f"InferencePool {self.ref}", pool_lister(self._api, self.ref), self._pool_changed, self._timing
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                tasks.create_task(pools.run(), name=f"watch {pools.what}")
        finally:
            self._tasks = None

    def _pool_changed(self, pools: Reflector) -> None:
        obj = pools.items.get(self.ref.name)
        spec: PoolSpec | None = None
        if obj is None:
            log.warning("InferencePool %s not found: no endpoints until it exists", self.ref)
        else:
            try:
                spec = parse_pool(obj, self.ref.group)
            except PoolSpecError as exc:
                log.error("InferencePool %s cannot be served: %s", self.ref, exc)
        previous, self.pool = self.pool, spec
        if spec is None:
            self._stop_pods()
            self._on_endpoints(None, [])
        elif previous is None or previous.selector != spec.selector:
            self._start_pods(spec)
        elif spec != previous and self._pods is not None and self._pods.synced:
            self._publish(self._pods)

    def _start_pods(self, spec: PoolSpec) -> None:
        assert self._tasks is not None
        self._stop_pods()
        pods = Reflector(
            f"pods {self.ref.namespace}/{spec.label_selector}",
            pod_lister(self._api, self.ref.namespace, spec.label_selector),
            self._pods_changed,
            self._timing,
        )
        self._pods = pods
        self._pods_task = self._tasks.create_task(pods.run(), name=f"watch {pods.what}")

    def _stop_pods(self) -> None:
        if self._pods_task is not None:
            self._pods_task.cancel()
        self._pods_task = None
        self._pods = None

    def _pods_changed(self, pods: Reflector) -> None:
        # A reflector replaced by a selector change may still deliver its last event.
        if pods is self._pods:
            self._publish(pods)

    def _publish(self, pods: Reflector) -> None:
        assert self.pool is not None
        self._on_endpoints(self.pool, pool_endpoints(pods.items.values(), self.pool, self._metrics_port))
