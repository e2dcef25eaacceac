"""Follow one InferencePool and the pods its selector matches, and report the pool's endpoints
whenever they may have changed. Shared by the EPP (PoolWatch: endpoints into its datastore) and
the routing sidecar (PoolEndpointsWatch: its SSRF allowlist, with `--enable-ssrf-protection
--inference-pool`), so both see the pool the same way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from epp.datastore import EndpointSpec
from epp.discovery.k8s.client import KubeConfigError, api_client, pod_lister, pool_lister
from epp.discovery.k8s.model import PoolRef, PoolSpec, PoolSpecError, parse_pool, pool_endpoints
from epp.discovery.k8s.reflector import Reflector, WatchTiming
from epp.discovery.static import DiscoveryError
from epp.tasks import cancel_and_wait

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

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


async def watch_pool_endpoints(
    ref: PoolRef,
    on_change: Callable[[set[str]], None],
    kubeconfig: Path | None = None,
    timing: WatchTiming | None = None,
) -> None:
    """Keep `on_change` told of the pool's `ip:port` set (Ready pods by active target ports, as
    the EPP picks from), until cancelled. Called with an empty set while the pool is absent;
    called again only when the set changes. The routing sidecar's SSRF allowlist runs on this."""
    current: set[str] | None = None

    def changed(pool: PoolSpec | None, endpoints: list[EndpointSpec]) -> None:
        nonlocal current
        hostports = {endpoint.hostport for endpoint in endpoints}
        if hostports != current:
            current = hostports
            on_change(set(hostports))

    try:
        api = await api_client(kubeconfig)
    except KubeConfigError as exc:
        raise DiscoveryError(
            f"InferencePool {ref}: no Kubernetes API to watch it from (in a cluster, the pod's "
            f"service account; else --kubeconfig or $KUBECONFIG): {exc}"
        ) from exc
    async with api:
        await PoolWatch(api, ref, changed, timing).run()


class PoolEndpointsWatch:
    """`watch_pool_endpoints` as a service with start/stop, shaped for the sidecar's allowlist
    source (`PoolEndpointsWatch(ref, allowlist.replace)`): `start` returns once the first set
    has been reported (the pool and its pods listed, or the pool found absent), and raises
    TimeoutError if the pool cannot be listed in time (RBAC, wrong group, no CRD): llm-d's
    sidecar likewise does not serve until its pool cache has synced."""

    def __init__(
        self,
        ref: PoolRef,
        on_change: Callable[[set[str]], None],
        kubeconfig: Path | None = None,
        timing: WatchTiming | None = None,
    ) -> None:
        self.ref = ref
        self._on_change = on_change
        self._kubeconfig = kubeconfig
        self._timing = timing
        self._reported = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        watch = watch_pool_endpoints(self.ref, self._report, self._kubeconfig, self._timing)
        self._task = loop.create_task(watch, name=f"pool endpoints {self.ref}")
        reported = loop.create_task(self._reported.wait())
        try:
            done, _ = await asyncio.wait(
                {reported, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # its owner gave up waiting: the watch must not run on
            await self.stop()
            raise
        finally:
            reported.cancel()
        if self._reported.is_set():
            return
        if self._task in done:
            self._task.result()  # the watch's own error (a bad kubeconfig, say)
        await self.stop()
        raise TimeoutError(
            f"InferencePool {self.ref} could not be listed within {timeout:.0f}s: check that its CRD "
            "is installed and that this pod's service account may list and watch inferencepools "
            "and pods in its namespace"
        )

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _report(self, hostports: set[str]) -> None:
        self._on_change(hostports)
        self._reported.set()
