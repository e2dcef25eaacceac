"""Kubernetes discovery, as GIE's EPP does it: the InferencePool named by --pool-name, the Ready
pods its selector matches (one endpoint per target port), the InferenceObjectives that give
requests their priority, and the InferenceModelRewrites that change the model they are sent to;
or, in GIE's standalone mode (--endpoint-selector), the Ready pods a label selector matches,
without a pool. Re-exports PoolEndpointsWatch (k8s/poolwatch.py), the same pool watch that the
routing sidecar's SSRF allowlist runs on (`epp sidecar --enable-ssrf-protection --inference-pool`).

See docs/kubernetes.md for the flags, RBAC and what is tested where."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epp.datastore import Datastore, EndpointSpec
from epp.discovery.k8s.client import api_client, model_rewrite_lister, objective_lister, pod_lister
from epp.discovery.k8s.model import (
    GROUP_V1,
    POOL_VERSIONS,
    FailureMode,
    PoolRef,
    PoolSpec,
    SelectorRef,
    objective_priorities,
    parse_label_selector,
    parse_target_ports,
    pool_endpoints,
)
from epp.discovery.k8s.poolwatch import PoolEndpointsWatch, PoolWatch, watch_pool_endpoints
from epp.discovery.k8s.reflector import Lister, Reflector, ResourceNotServed, WatchTiming
from epp.discovery.k8s.rewrites import pool_model_rewrites
from epp.discovery.static import DiscoveryError
from epp.params.values import unquote
from epp.requestcontrol.model_rewrite import ModelRewrite
from epp.tasks import cancel_and_wait

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger(__name__)

# appProtocol values whose requests the EPP can parse (OpenAI-style HTTP/1.1 JSON). A pool of
# gRPC model servers (kubernetes.io/h2c) keeps the EPP not-ready, as GIE's does without a gRPC parser.
SUPPORTED_APP_PROTOCOLS = frozenset({"http"})

__all__ = [
    "FailureMode",
    "PoolDiscovery",
    "PoolEndpointsWatch",
    "PoolRef",
    "SelectorDiscovery",
    "SelectorRef",
    "WatchTiming",
    "add_arguments",
    "pool_ref_from_args",
    "selector_from_args",
    "watch_pool_endpoints",
]


class _ClusterDiscovery:
    """What both discovery modes share: one background task over one API client, stopped
    together; if the task dies, the datastore stops counting as synced (readiness drops)."""

    def __init__(
        self,
        datastore: Datastore,
        kubeconfig: Path | None,
        timing: WatchTiming | None,
        metrics_port: int | None,
    ) -> None:
        self._datastore = datastore
        self._kubeconfig = kubeconfig
        self._timing = timing or WatchTiming()
        self._metrics_port = metrics_port
        self._api: ApiClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def _launch(self, run: Callable[[ApiClient], Coroutine[Any, Any, None]], name: str) -> None:
        self._api = await api_client(self._kubeconfig)
        self._task = asyncio.get_running_loop().create_task(run(self._api), name=name)
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._api is not None:
            await self._api.close()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("Kubernetes discovery failed; not serving", exc_info=task.exception())
            self._datastore.synced = False


class PoolDiscovery(_ClusterDiscovery):
    """The EPP's discovery from a cluster: endpoints into the datastore, objective priorities
    to `on_objectives` and the pool's model rewrites to `on_model_rewrites`. `datastore.synced`
    turns true only once the pool and its pods have been listed, and false again while the pool
    is deleted (the datastore is then emptied), so the health service reports NOT_SERVING
    exactly when there is nothing to route to."""

    def __init__(
        self,
        ref: PoolRef,
        datastore: Datastore,
        on_objectives: Callable[[Mapping[str, int]], None],
        kubeconfig: Path | None = None,
        timing: WatchTiming | None = None,
        on_model_rewrites: Callable[[list[ModelRewrite]], None] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        super().__init__(datastore, kubeconfig, timing, metrics_port)
        self.ref = ref
        self.pool: PoolSpec | None = None
        self._on_objectives = on_objectives
        self._on_model_rewrites = on_model_rewrites

    @property
    def failure_mode(self) -> FailureMode | None:
        """The pool's endpointPickerRef.failureMode: what the gateway does when this EPP does not
        answer. The gateway enforces it; the EPP only reports it (log, docs/kubernetes.md)."""
        return self.pool.failure_mode if self.pool is not None else None

    async def start(self) -> None:
        """Connect and start watching; returns at once (readiness follows the first sync)."""
        await self._launch(self._run, "k8s-discovery")

    async def _run(self, api: ApiClient) -> None:
        async with asyncio.TaskGroup() as tasks:
            watch = PoolWatch(api, self.ref, self._endpoints_changed, self._timing, self._metrics_port)
            tasks.create_task(watch.run())
            namespace = self.ref.namespace
            tasks.create_task(
                self._watch_optional(
                    f"InferenceObjectives in {namespace}",
                    objective_lister(api, namespace),
                    lambda objects: self._on_objectives(objective_priorities(objects, self.ref)),
                    "InferenceObjective is not installed: every request gets priority 0",
                )
            )
            on_rewrites = self._on_model_rewrites
            if on_rewrites is not None:
                tasks.create_task(
                    self._watch_optional(
                        f"InferenceModelRewrites in {namespace}",
                        model_rewrite_lister(api, namespace),
                        lambda objects: on_rewrites(pool_model_rewrites(objects, self.ref)),
                        "InferenceModelRewrite is not installed: models are not rewritten",
                    )
                )

    async def _watch_optional(
        self,
        what: str,
        lister: Lister,
        changed: Callable[[list[dict[str, Any]]], None],
        missing: str,
    ) -> None:
        """Follow a collection whose CRD a cluster may not have installed."""
        reflector = Reflector(
            what, lister, lambda r: changed(list(r.items.values())), self._timing, optional=True
        )
        try:
            await reflector.run()
        except ResourceNotServed:
            log.warning("%s", missing)

    def _endpoints_changed(self, pool: PoolSpec | None, endpoints: list[EndpointSpec]) -> None:
        if pool != self.pool:
            self._pool_changed(pool)
        if pool is None or pool.app_protocol not in SUPPORTED_APP_PROTOCOLS:
            self._datastore.clear()
            self._datastore.synced = False
            return
        self._datastore.replace_all(endpoints)

    def _pool_changed(self, pool: PoolSpec | None) -> None:
        self.pool = pool
        if pool is None:
            return
        log.info(
            "InferencePool %s: selector %s, targetPorts %s, appProtocol %s, failureMode %s",
            self.ref,
            pool.label_selector,
            list(pool.target_ports),
            pool.app_protocol,
            pool.failure_mode,
        )
        if pool.app_protocol not in SUPPORTED_APP_PROTOCOLS:
            log.error(
                "InferencePool %s: appProtocol %r is not supported (only %s); not serving",
                self.ref,
                pool.app_protocol,
                sorted(SUPPORTED_APP_PROTOCOLS),
            )


class SelectorDiscovery(_ClusterDiscovery):
    """GIE's standalone mode: the Ready pods of a namespace that a label selector matches, one
    endpoint per target port, watched through the API like a pool's pods (no InferencePool, no
    InferenceObjectives: as in GIE, priorities then come only from --objectives-file).
    `datastore.synced` turns true once the pods have been listed."""

    def __init__(
        self,
        ref: SelectorRef,
        datastore: Datastore,
        kubeconfig: Path | None = None,
        timing: WatchTiming | None = None,
        metrics_port: int | None = None,
    ) -> None:
        super().__init__(datastore, kubeconfig, timing, metrics_port)
        self.ref = ref

    async def start(self) -> None:
        """Connect and start watching; returns at once (readiness follows the first list)."""
        log.info("endpoint selector: %s (no InferencePool)", self.ref)
        await self._launch(self._watch_pods, "k8s-endpoint-selector")

    async def _watch_pods(self, api: ApiClient) -> None:
        lister = pod_lister(api, self.ref.namespace, self.ref.spec.label_selector)
        await Reflector(str(self.ref), lister, self._pods_changed, self._timing).run()

    def _pods_changed(self, pods: Reflector) -> None:
        self._datastore.replace_all(pool_endpoints(pods.items.values(), self.ref.spec, self._metrics_port))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Kubernetes discovery (instead of standalone endpoints)",
        "Follow an InferencePool: its Ready pods are the endpoints, InferenceObjectives their priorities.",
    )
    group.add_argument("--pool-name", help="the InferencePool to serve")
    group.add_argument(
        "--pool-namespace", help="the pool's namespace (default: env NAMESPACE, else 'default')"
    )
    group.add_argument(
        "--pool-group",
        default=GROUP_V1,
        choices=sorted(POOL_VERSIONS),
        help=f"the pool's API group: {GROUP_V1} (v1, default) or the older v1alpha2 group",
    )
    group.add_argument(
        "--endpoint-selector",
        metavar="KEY=VALUE[,...]",
        help="GIE's standalone mode: serve the Ready pods of --pool-namespace that this label selector "
        "matches, without an InferencePool (needs --endpoint-target-ports)",
    )
    group.add_argument(
        "--endpoint-target-ports",
        action="append",
        default=[],
        metavar="PORT[,...]",
        help="with --endpoint-selector: the pods' serving ports, 1 to 8 (comma-separated or repeated)",
    )
    group.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig file (default: the pod's service account, else $KUBECONFIG or ~/.kube/config)",
    )


def _namespace(args: argparse.Namespace) -> str:
    """GIE's resolution: the flag, else env NAMESPACE, else `default`."""
    return str(args.pool_namespace or os.environ.get("NAMESPACE") or "default")


def _check_one_source(args: argparse.Namespace, standalone: bool) -> None:
    given = [
        name
        for name, present in (
            ("--pool-name", bool(args.pool_name)),
            ("--endpoint-selector", args.endpoint_selector is not None),
            ("standalone endpoints (--endpoints-file/--endpoint)", standalone),
        )
        if present
    ]
    if len(given) > 1:
        raise DiscoveryError(f"{' and '.join(given)} exclude each other")
    if not given:
        raise DiscoveryError(
            "no endpoints: give --pool-name, --endpoint-selector, --endpoints-file or --endpoint HOST:PORT"
        )


def pool_ref_from_args(args: argparse.Namespace, standalone: bool) -> PoolRef | None:
    """The pool to follow, or None for an endpoint selector or standalone endpoints; exactly one
    of the three must be given."""
    _check_one_source(args, standalone)
    if args.endpoint_target_ports and args.endpoint_selector is None:
        raise DiscoveryError("--endpoint-target-ports goes with --endpoint-selector")
    if not args.pool_name:
        return None
    return PoolRef(args.pool_name, _namespace(args), args.pool_group)


# GIE names the standalone pool after the EPP's Deployment: its pod name less the two
# generated suffixes (ReplicaSet hash, pod id).
_DEPLOYMENT_POD_NAME = re.compile(r"^(.+)-[a-z0-9]+-[a-z0-9]+$")


def selector_from_args(args: argparse.Namespace) -> SelectorRef | None:
    """GIE's standalone mode from --endpoint-selector and --endpoint-target-ports, or None."""
    if args.endpoint_selector is None:
        return None
    try:
        selector = parse_label_selector(unquote(args.endpoint_selector))
    except ValueError as exc:
        raise DiscoveryError(f"--endpoint-selector: {exc}") from None
    try:
        ports = parse_target_ports(unquote(value) for value in args.endpoint_target_ports)
    except ValueError as exc:
        raise DiscoveryError(str(exc)) from None
    pod_name = os.environ.get("POD_NAME", "")
    match = _DEPLOYMENT_POD_NAME.match(pod_name)
    name = match.group(1) if match else pod_name or "standalone"
    return SelectorRef(selector, ports, _namespace(args), name)
