"""Run the endpoint picker: an Envoy ext_proc gRPC service that chooses a model-server endpoint
for every inference request, with endpoints from a file, flags or (see --pool-name) Kubernetes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from epp import eventloop, gieflags, tls, tracing
from epp.config.build import build_director
from epp.config.loader import load_config, load_config_file
from epp.config.model import PickerConfig
from epp.config.objectives import load_objectives_file
from epp.config.rewrites import load_model_rewrites_file
from epp.config.stability import check_experimental
from epp.datalayer import BackgroundService, EndpointDiscovery, KubernetesSource
from epp.datalayer.overrides import ScrapeOverrides
from epp.datalayer.scraper import DEFAULT_INTERVAL, DEFAULT_OVERDUE_TURNS, MetricsScraper
from epp.datastore import Datastore
from epp.discovery import kubernetes as k8s_discovery
from epp.discovery.eds import EdsFileWriter
from epp.discovery.k8s import leader as election
from epp.discovery.k8s.client import KubeConfigError, api_client
from epp.discovery.k8s.objectwatch import ObjectWatch
from epp.discovery.static import DiscoveryError, FileDiscovery, parse_endpoint_flag
from epp.explain import DecisionRecorder
from epp.extproc.rlqs import RateLimitQuotaService
from epp.extproc.server import Health, bind, ext_proc_server, health_server
from epp.extproc.stream import StreamOptions
from epp.extproc.stream_metrics import StreamMetrics
from epp.flowcontrol.envoy_quota import EnvoyQuota
from epp.flowcontrol.overload import OverloadGuard
from epp.flowcontrol.standing_queue import StandingQueue
from epp.framework import PluginContext
from epp.metrics import auth_flags as metrics_auth
from epp.metrics import secure as metrics_secure
from epp.metrics.aliases import NAME_SETS
from epp.metrics.exporter import EppMetrics
from epp.metrics.http import MetricsServer
from epp.observe import LiveView, prefix_indexes
from epp.observe import flags as observe_flags
from epp.params.duration import parse_duration
from epp.readyfile import write_ready_file
from epp.replicas import ReplicaState
from epp.replicas import flags as replica_flags
from epp.requestcontrol.model_rewrite import ModelRewrite
from epp.requests.jsontext import MAX_JSON_CONTAINERS, limit_containers
from epp.signals import on_stop_signal, stop_event
from epp.tasks import cancel_and_wait
from epp.tls import parse_bool

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

    from epp.discovery.k8s.elector import LeaderElector
    from epp.replicas.redis_sync import RedisReplicaSync
    from epp.replicas.workers import WorkerPlan

log = logging.getLogger(__name__)

# Seconds after a stop began within which another SIGINT/SIGTERM is the same stop, not a second one.
REPEATED_SIGNAL_WINDOW = 1.0


@dataclass
class ServeOptions:
    host: str = "0.0.0.0"
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    metrics_port: int = 9090
    pool_name: str = "standalone"
    endpoints_file: Path | None = None
    envoy_eds_file: Path | None = None  # set: keep the pool there as an Envoy EDS file
    endpoints: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    refresh_metrics_interval: float = DEFAULT_INTERVAL
    # Scrape turns a /metrics GET may go unanswered before the endpoint counts as overdue (hung).
    metrics_overdue_intervals: int = DEFAULT_OVERDUE_TURNS
    metrics_staleness: float = 2.0  # GIE's --metrics-staleness-threshold, for the pool gauges
    # GIE's --refresh-prometheus-metrics-interval: 0 computes the pool gauges at every read.
    pool_gauges_refresh: float = 0.0
    health_checking: bool = True  # GIE's --health-checking: grpc.health.v1 on the ext_proc port too
    ready_file: Path | None = None
    shutdown_grace: float = 120.0
    # llm-d's --drain-timeout: after SIGTERM, ext_proc keeps accepting streams this long first
    # (the router's default, 30 s).
    drain_window: float = 30.0
    # llm-d's --grpc-max-recv-msg-size / --grpc-max-send-msg-size (0: the server's default).
    grpc_message_limits: tuple[int, int] = (0, 0)
    grpc_stream_metrics: bool = False  # llm-d's --enable-grpc-stream-metrics
    # Overload protection of the EPP itself (epp.flowcontrol.overload): 0 turns a limit off.
    max_concurrent_streams: int = 10_000
    max_event_loop_lag: float = 0.25
    # How long a request may have waited (since the gateway received it) before the EPP saw it.
    max_queue_wait: float = 1.0
    # Below that ceiling, the standing-queue controller (epp.flowcontrol.standing_queue): 0 target: off.
    queue_wait_target: float = 0.0
    queue_wait_interval: float = 0.1
    # Serve Envoy's rate-limit quota (RLQS) beside ext_proc: the gateway refuses what the
    # standing-queue controller would (epp.flowcontrol.envoy_quota); needs queue_wait_target.
    rate_limit_quota: bool = False
    stream: StreamOptions = field(default_factory=StreamOptions)
    pool: k8s_discovery.PoolRef | None = None  # set: discover endpoints from this InferencePool
    selector: k8s_discovery.SelectorRef | None = None  # set: from the pods this selector matches
    kubeconfig: Path | None = None
    tls_options: tls.TlsOptions = field(default_factory=tls.TlsOptions)
    leader_election: election.LeaseTiming | None = None  # set: active-passive over the pool's Lease
    metrics_auth: bool = False  # /metrics behind TokenReview + SubjectAccessReview
    metrics_tls: tls.ReloadedPair | None = None  # llm-d's --metrics-cert-dir (+ --metrics-client-ca-file)
    config: PickerConfig = field(default_factory=load_config)  # default: GIE's default profile
    objectives: dict[str, int] = field(default_factory=dict)  # objective name -> priority
    model_rewrites: list[ModelRewrite] = field(default_factory=list)  # standalone: from a file
    metrics_aliases: tuple[str, ...] = ()  # extra metric name sets (epp.metrics.aliases.NAME_SETS)
    # GIE's model-server metrics flags: over the config's data layer, and the port scraped.
    scrape_overrides: ScrapeOverrides = field(default_factory=ScrapeOverrides)
    model_server_metrics_port: int | None = None
    observe: observe_flags.ObserveOptions = field(default_factory=observe_flags.ObserveOptions)
    replicas: replica_flags.ReplicaOptions = field(default_factory=replica_flags.ReplicaOptions)


class EndpointPicker:
    """The assembled service. `start` binds ports (0 = free port) and returns once serving."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.datastore = Datastore()
        self.metrics = EppMetrics(aliases=options.metrics_aliases)
        self.metrics.expose_process_metrics()
        self.pool_gauges = self.metrics.watch_pool(
            self.datastore, options.pool_name, options.metrics_staleness
        )
        self._pool_gauges_task: asyncio.Task[None] | None = None
        for warning in options.config.warnings:
            log.warning("config: %s", warning)
        log.info("scheduling configuration:\n%s", options.config.summary())
        self.director, components = build_director(
            options.config,
            self.datastore,
            PluginContext(self.metrics),
            options.objectives,
            pool_name=options.pool_name,
        )
        self.director.model_rewrites.replace(options.model_rewrites)
        limit_containers(options.stream.max_json_containers)
        for profile in components.scheduler.profiles.values():
            profile.keep_scores = options.stream.emit_endpoint_scores
        flow_control = self.director.flow_control
        if flow_control is not None and flow_control.reclamation is not None:
            reclamation = flow_control.reclamation
            reclamation.scrape_timing(options.refresh_metrics_interval, options.metrics_staleness)
        self.replica_sync: RedisReplicaSync | None = None
        if options.replicas.sync_url:
            from epp.replicas.redis_sync import RedisReplicaSync  # only with --replica-sync

            state = ReplicaState(options.replicas.resolved_id(), self.datastore, components.plugins.values())
            self.replica_sync = RedisReplicaSync(
                options.replicas.sync_url,
                state,
                options.replicas.resolved_namespace(options.pool_name),
                self.metrics.registry,
                options.replicas.interval,
                options.replicas.ttl,
            )
        self.overload = OverloadGuard(
            options.max_concurrent_streams,
            options.max_event_loop_lag,
            options.max_queue_wait,
            self.metrics.overload_refused,
            StandingQueue(options.queue_wait_target, options.queue_wait_interval)
            if options.queue_wait_target
            else None,
        )
        self.quota: RateLimitQuotaService | None = None
        if options.rate_limit_quota:
            guard = self.overload
            guard.by_priority = True  # the gateway refuses the sheddable excess; the guard, sheddable first
            director = self.director  # its objectives are replaced as InferenceObjectives change
            self.quota = RateLimitQuotaService(
                EnvoyQuota(lambda: guard.admitted, lambda: guard.refused),
                self.metrics,
                objectives=lambda: director.objectives,
            )
        self.recorder = DecisionRecorder(options.observe.records)
        if self.recorder.enabled:
            self.director.recorder = self.recorder
        self.live_view = LiveView(
            self.datastore, self.recorder, options.pool_name, prefix_indexes(components.plugins)
        )
        self.metrics_server = MetricsServer(
            self.metrics.registry,
            options.host,
            options.metrics_port,
            self.live_view.routes(),
            self.live_view.on_shutdown,
        )
        self.metrics_server.ssl_context = None if options.metrics_tls is None else options.metrics_tls.context
        self.services = [p for p in components.plugins.values() if isinstance(p, BackgroundService)]
        discovery = components.plugins.get(options.config.discovery or "")
        self.discovery = discovery if isinstance(discovery, EndpointDiscovery) else None
        self.object_sources = [
            p for p in components.plugins.values() if isinstance(p, KubernetesSource) and p.extractors
        ]
        self._object_watches: list[ObjectWatch] = []
        self.scraper: MetricsScraper | None = None
        if components.scrape is not None:
            self.scraper = MetricsScraper(
                self.datastore,
                interval=options.refresh_metrics_interval,
                overdue_turns=options.metrics_overdue_intervals,
                settings=options.scrape_overrides.apply(components.scrape),
                poll_errors=self.metrics.datalayer_poll_errors,
                extract_errors=self.metrics.datalayer_extract_errors,
            )
        elif options.scrape_overrides != ScrapeOverrides() or options.model_server_metrics_port:
            log.warning(
                "the config turns scraping off (an empty dataLayer): "
                "the --model-server-metrics-* and *-metric flags have no effect"
            )
        self._file_discovery: FileDiscovery | None = None
        self._pool_discovery: k8s_discovery.PoolDiscovery | None = None
        self._eds_writer: EdsFileWriter | None = None
        self._selector_discovery: k8s_discovery.SelectorDiscovery | None = None
        self._servers: list[grpc.aio.Server] = []
        self._stopping = False
        self._serving = False  # start() completed: a stop drains (--drain-timeout) only then
        self._drain_cut = asyncio.Event()  # set by end_drain(): the drain window ends now
        self._stop_started: float | None = None  # monotonic time stop() began
        self.elector: LeaderElector | None = None
        self._kube: ApiClient | None = None  # for leader election and metrics auth (discovery has its own)
        self.certificate = tls.ServingCertificate(options.tls_options)
        self.failed = asyncio.Event()  # set when the picker must exit (leadership lost, as GIE)
        self.grpc_port = 0
        self.health_port = 0

    async def start(self, before_serving: Callable[[], None] | None = None) -> None:
        """Bind and serve. On failure, `stop` releases whatever had started. `before_serving` runs
        once everything is built, before the ports are bound and the event loop's lag is measured
        (a step that stops the world, so no request waits behind it and the guard never counts
        it as load)."""
        if self.options.metrics_auth:
            from epp.metrics.auth import MetricsAuth  # here: it imports the Kubernetes client

            self.metrics_server.auth = MetricsAuth(await self._metrics_auth_client())
        credentials = self.certificate.credentials()
        await self.certificate.start()
        tracing.configure(self.options.observe.tracing)
        for service in self.services:  # before discovery, so they hear of every endpoint
            await service.start(self.datastore)
        if self.object_sources:
            await self._watch_objects()
        if self.scraper is not None:
            await self.scraper.start()
        discovery = self.discovery
        if discovery is not None:
            log.info(
                "endpoints from %s (%s), not Kubernetes: InferenceObjective and InferenceModelRewrite "
                "are not followed",
                discovery.endpoints_file,
                discovery.name,
            )
            self._file_discovery = FileDiscovery(
                discovery.endpoints_file,
                self.datastore,
                parse=discovery.parse_endpoints,
                watch=discovery.watch_file,
            )
            await self._file_discovery.start()
        elif self.options.pool is not None:
            self._pool_discovery = k8s_discovery.PoolDiscovery(
                self.options.pool,
                self.datastore,
                self._set_objectives,
                self.options.kubeconfig,
                on_model_rewrites=self.director.model_rewrites.replace,
                metrics_port=self.options.model_server_metrics_port,
            )
            await self._pool_discovery.start()
        elif self.options.selector is not None:
            self._selector_discovery = k8s_discovery.SelectorDiscovery(
                self.options.selector,
                self.datastore,
                self.options.kubeconfig,
                metrics_port=self.options.model_server_metrics_port,
            )
            await self._selector_discovery.start()
        elif self.options.endpoints_file is not None:
            self._file_discovery = FileDiscovery(
                self.options.endpoints_file,
                self.datastore,
                metrics_port=self.options.model_server_metrics_port,
            )
            await self._file_discovery.start()
        else:
            metrics_port = self.options.model_server_metrics_port
            specs = [
                parse_endpoint_flag(e, self.options.models, metrics_port) for e in self.options.endpoints
            ]
            self.datastore.replace_all(specs)
        if self.options.envoy_eds_file is not None:
            self._eds_writer = EdsFileWriter(self.datastore, self.options.envoy_eds_file)
            self._eds_writer.start()
        if self.replica_sync is not None:
            await self.replica_sync.start()
        leader = None
        if self.options.leader_election is not None:
            leader = await self._start_election(self.options.leader_election)
            if not self.options.config.standby_routes:
                is_leader = leader
                self.director.standby = lambda: not is_leader()
        health = Health(lambda: self.datastore.synced and not self._stopping, leader)
        ext_proc_health = health if self.options.health_checking else None
        reuse_port = self.options.replicas.reuse_port
        if before_serving is not None:
            before_serving()
        self.overload.start()
        if self.quota is not None:
            self.quota.start()
        grpc_server = ext_proc_server(
            self.director,
            self.options.stream,
            ext_proc_health,
            self.overload,
            reuse_port,
            self.options.grpc_message_limits,
            StreamMetrics(self.metrics.registry) if self.options.grpc_stream_metrics else None,
            self.quota,
        )
        probe_server = health_server(health, reuse_port)
        self.grpc_port = bind(grpc_server, f"{self.options.host}:{self.options.grpc_port}", credentials)
        self.health_port = bind(probe_server, f"{self.options.host}:{self.options.grpc_health_port}", None)
        self._servers = [grpc_server, probe_server]
        for server in self._servers:
            await server.start()
        await self.metrics_server.start()
        if self.options.metrics_tls is not None:
            await self.options.metrics_tls.start()
        if self.options.pool_gauges_refresh > 0:
            self._pool_gauges_task = asyncio.get_running_loop().create_task(
                self.pool_gauges.refresh_every(self.options.pool_gauges_refresh), name="pool-gauges"
            )
        if self.options.ready_file is not None:
            ports = {
                "grpc_port": self.grpc_port,
                "health_port": self.health_port,
                "metrics_port": self.metrics_server.port,
                "pid": os.getpid(),  # which worker, under `epp serve --workers`
            }
            write_ready_file(self.options.ready_file, ports)
        self._serving = True
        log.info(
            "endpoint picker serving ext_proc on %s:%d (health %d) with %d endpoints",
            self.options.host,
            self.grpc_port,
            self.health_port,
            len(self.datastore.endpoints()),
        )

    def end_drain(self) -> None:
        """End the drain window now: a second SIGINT/SIGTERM, as the router's second signal. One
        within REPEATED_SIGNAL_WINDOW of the stop is the same stop delivered twice (a terminal's
        Ctrl-C reaches `--workers` processes and their supervisor, which passes it on; systemd
        signals every process of the unit), not a request to hurry."""
        if self._stop_started is None or time.monotonic() - self._stop_started < REPEATED_SIGNAL_WINDOW:
            return
        if not self._drain_cut.is_set():
            log.info("stop signal during the drain window: ending it now")
        self._drain_cut.set()

    async def stop(self) -> None:
        """Report NOT_SERVING, then let in-flight requests finish for up to the shutdown grace: an
        ext_proc stream lives as long as its response, so stopping at once would cut generations."""
        self._stopping = True
        self._stop_started = time.monotonic()
        if self._serving:  # a start that failed has no requests in flight: its error is the news
            log.info(
                "stopping: NOT_SERVING; in-flight requests may finish for up to %gs (--shutdown-grace)",
                self.options.shutdown_grace,
            )
        if self.elector is not None:
            await self.elector.stop()  # release first: a standby takes over while this one drains
        if self.options.drain_window > 0 and self._serving and not self.failed.is_set():
            # As llm-d's router: clients that have not yet seen NOT_SERVING (or a DNS refresh)
            # still get their new streams served during the window. A start that failed has
            # served no one, and a lost lease is no longer this replica's to serve: it stops at
            # once, as the router does when its manager fails (leader election lost included).
            log.info("draining: still serving ext_proc for %gs (--drain-timeout)", self.options.drain_window)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain_cut.wait(), self.options.drain_window)
        if self.quota is not None:  # its streams last as long as the gateway: not in the grace
            await self.quota.stop()
        await asyncio.gather(*(server.stop(self.options.shutdown_grace) for server in self._servers))
        if self._serving:
            log.info("drained: ext_proc stopped")
        if self.director.flow_control is not None:
            await self.director.flow_control.stop()  # queued requests still dispatch while draining
        await self.overload.stop()
        await self.metrics_server.stop()
        if self.options.metrics_tls is not None:
            await self.options.metrics_tls.stop()
        if self.replica_sync is not None:
            await self.replica_sync.stop()
        await cancel_and_wait(self._pool_gauges_task)
        await self.certificate.stop()
        if tracing.active is not None:
            await asyncio.to_thread(tracing.shutdown)
        if self._eds_writer is not None:
            await self._eds_writer.stop()
        if self._file_discovery is not None:
            await self._file_discovery.stop()
        if self._pool_discovery is not None:
            await self._pool_discovery.stop()
        if self._selector_discovery is not None:
            await self._selector_discovery.stop()
        if self.scraper is not None:
            await self.scraper.stop()
        for service in self.services:
            await service.stop()
        for watch in self._object_watches:
            await watch.stop()
        if self._kube is not None:
            await self._kube.close()

    async def _start_election(self, timing: election.LeaseTiming) -> Callable[[], bool]:
        pool = self.options.pool
        if pool is None:
            raise ValueError("--ha-enable-leader-election needs --pool-name (the Lease is per pool)")
        from epp.discovery.k8s.elector import LeaderElector  # here: it imports the Kubernetes client

        self.elector = LeaderElector(
            await self._kube_client(),
            election.lease_name(pool),
            pool.namespace,
            timing=timing,
            on_lost=self.failed.set,
        )
        self.elector.start()
        elector = self.elector
        return lambda: elector.is_leader

    async def _watch_objects(self) -> None:
        """Run each k8s-notification-source's watch in the namespace endpoints are discovered in."""
        where = self.options.pool or self.options.selector
        if where is None:
            names = ", ".join(source.name for source in self.object_sources)
            raise ValueError(
                f"k8s-notification-source {names} watches Kubernetes objects: it needs Kubernetes "
                "discovery (--pool-name or --endpoint-selector), not --endpoint or --endpoints-file"
            )
        api = await self._kube_client()
        for source in self.object_sources:
            watch = ObjectWatch(api, source.kind, where.namespace, source.notify)
            watch.start()
            self._object_watches.append(watch)

    async def _kube_client(self) -> ApiClient:
        if self._kube is None:
            self._kube = await api_client(self.options.kubeconfig)
        return self._kube

    async def _metrics_auth_client(self) -> ApiClient:
        try:
            return await self._kube_client()
        except KubeConfigError as exc:
            raise KubeConfigError(
                "--metrics-endpoint-auth needs the Kubernetes API to review tokens (in a cluster, "
                f"--kubeconfig or $KUBECONFIG): {exc}. Pass --metrics-endpoint-auth=false to serve "
                "/metrics without authentication"
            ) from exc

    def _set_objectives(self, priorities: Mapping[str, int]) -> None:
        self.director.objectives = priorities


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    port = gieflags.port_number
    parser.add_argument("--grpc-port", type=port, default=9002, help="ext_proc gRPC port (default 9002)")
    parser.add_argument(
        "--grpc-health-port", type=port, default=9003, help="grpc.health.v1 port for probes (default 9003)"
    )
    parser.add_argument(
        "--metrics-port",
        type=port,
        default=9090,
        help="Prometheus /metrics port for the EPP's own metrics (default 9090)",
    )
    metrics_auth.add_arguments(parser)
    metrics_secure.add_arguments(parser)
    source = parser.add_argument_group("standalone endpoints")
    source.add_argument("--endpoints-file", type=Path, help="YAML endpoint list, re-read when it changes")
    parser.add_argument(
        "--envoy-eds-file",
        type=Path,
        metavar="FILE",
        help="keep the pool (from any discovery) in this Envoy EDS file, for a gateway whose pool cluster "
        "reads it (the fallback list needs one; see docs/operations.md)",
    )
    source.add_argument(
        "--endpoint", action="append", default=[], metavar="HOST:PORT", help="an endpoint (repeatable)"
    )
    source.add_argument(
        "--model",
        action="append",
        default=[],
        help="model served by --endpoint endpoints (repeatable; default any)",
    )
    k8s_discovery.add_arguments(parser)
    election.add_arguments(parser)
    tls.add_arguments(parser)
    gieflags.add_arguments(parser)
    gieflags.add_metrics_arguments(parser)
    observe_flags.add_arguments(parser)
    replica_flags.add_arguments(parser)
    scheduling = parser.add_argument_group("scheduling")
    config = scheduling.add_mutually_exclusive_group()
    config.add_argument(
        "--config-file",
        type=Path,
        help="EndpointPickerConfig YAML (GIE or llm-d); default: GIE's default profile "
        "(queue 2, kv-cache 2, prefix-cache 3)",
    )
    config.add_argument("--config-text", metavar="YAML", help="the EndpointPickerConfig itself, inline")
    scheduling.add_argument(
        "--strict-config",
        action="store_true",
        help="refuse a config the EPP would load with warnings (unknown plugin parameters, deprecated "
        "names or shapes); default: load it as the Go EPPs do and log each warning",
    )
    scheduling.add_argument(
        "--objectives-file",
        type=Path,
        help="InferenceObjective YAML giving each objective's priority (requests pick one with the "
        "x-gateway-inference-objective header; negative = sheddable when the pool is saturated)",
    )
    scheduling.add_argument(
        "--model-rewrites-file",
        type=Path,
        help="InferenceModelRewrite YAML (standalone; with --pool-name they are watched in the cluster): "
        "the model a request names is sent upstream as another, chosen by weight",
    )
    parser.add_argument(
        "--refresh-metrics-interval",
        default="50ms",
        help="model-server /metrics scrape interval, Go duration (default 50ms, as GIE)",
    )
    parser.add_argument(
        "--metrics-overdue-intervals",
        type=int,
        default=DEFAULT_OVERDUE_TURNS,
        metavar="N",
        help="an endpoint whose /metrics stays unanswered for N scrape intervals is hung: it gets "
        f"requests only when no other endpoint is ready (default {DEFAULT_OVERDUE_TURNS}; 0: off)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="larger request bodies get 413 (default 16 MiB; at least 1)",
    )
    parser.add_argument(
        "--max-json-containers",
        type=int,
        default=MAX_JSON_CONTAINERS,
        metavar="N",
        help="request bodies opening more JSON arrays and objects get 400 before they are parsed "
        f"(orjson takes ~0.8 us per array, on the event loop; default {MAX_JSON_CONTAINERS:,}; 0: no limit)",
    )
    parser.add_argument(
        "--served-header",
        default=None,
        metavar="NAME",
        help="add this response header naming the chosen endpoint (an HTTP header name, not host or "
        "x-envoy*, which Envoy drops; off by default; "
        "leaks pod addresses)",
    )
    parser.add_argument(
        "--ready-file", type=Path, help="once serving, write the bound ports here as JSON (for orchestrators)"
    )
    parser.add_argument(
        "--read-streamed-responses",
        action="store_true",
        help="read SSE response bodies for token usage metrics: one ext_proc message per chunk, i.e. per "
        "token (default: ask Envoy to stop sending them after the headers; requires allow_mode_override)",
    )
    parser.add_argument(
        "--queue-message-timeout",
        default="300s",
        help="with flow control busy, a request whose body Envoy BUFFERS asks Envoy to wait up to this for "
        "the EPP's answer (override_message_timeout; at most Envoy's max_message_timeout), so a queued "
        "request is not cut by Envoy's message_timeout (0: never ask; default 300s)",
    )
    parser.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=10_000,
        help="requests (ext_proc streams, each as long as its response) the EPP holds at once; beyond, a new "
        "request is answered 429 with Retry-After at once (0: no limit; default 10000)",
    )
    parser.add_argument(
        "--max-event-loop-lag",
        default="250ms",
        help="while the EPP's event loop lags more than this in two measurements in a row (it is out of "
        "CPU; one slow callback is not), new requests are answered "
        "429 with Retry-After at once instead of waiting into Envoy's message timeout "
        "(0: off; default 250ms)",
    )
    eventloop.add_argument(parser)
    parser.add_argument(
        "--max-queue-wait",
        default="1s",
        help="a request whose headers reach the EPP more than this after the gateway received it (it waited "
        "in Envoy or gRPC behind an overloaded EPP) is answered 429 with Retry-After at once; needs Envoy's "
        "request.time attribute (request_attributes of the ext_proc filter; without it, no check) and "
        "compares the gateway's wall clock with the EPP's (0: off; default 1s, a tenth of Envoy's "
        "message_timeout)",
    )
    parser.add_argument(
        "--queue-wait-target",
        default="0",
        help="below --max-queue-wait, keep the queue before the EPP short: once every request for "
        "--queue-wait-interval waited more than this before the EPP saw it (a standing queue, not a burst), "
        "each request that waited more is answered 429 with Retry-After at once, until one waits less "
        "(CoDel's rule; waits taken from the shortest seen lately, so a constant clock skew under the "
        "interval does not count; 0: off, the default; 50ms suits a shared host)",
    )
    parser.add_argument(
        "--queue-wait-interval",
        default="100ms",
        help="how long waits must all exceed --queue-wait-target before the EPP sheds, longer than the "
        "target (a burst that drains within it is served; default 100ms)",
    )
    parser.add_argument(
        "--rate-limit-quota",
        action="store_true",
        help="also serve Envoy's rate-limit quota service (RLQS) on the ext_proc port: while the "
        "--queue-wait-target controller refuses over a fifth of the requests, the gateway's "
        "rate_limit_quota filter gets a token bucket at the EPP's capacity measured then (requests "
        "handled per CPU-second), raised while nothing is refused and lifted once the load falls below "
        "it, so the excess is refused in Envoy at once (needs --queue-wait-target and the filter in the "
        "gateway: epp run --quota-from-epp; off by default)",
    )
    parser.add_argument(
        "--shutdown-grace",
        default="120s",
        help="on SIGTERM, how long in-flight requests may finish (Go duration, default 120s)",
    )
    parser.add_argument(
        "--disable-endpoint-subset-filter",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="ignore the gateway's envoy.lb.subset_hint (GIE's flag, for scale-from-zero)",
    )
    parser.add_argument(
        "--refresh-prometheus-metrics-interval",
        default="0s",
        help="recompute the inference_pool_* average and ready-pods gauges this often, Go duration "
        "(GIE: 5s); default 0s: at every read of /metrics",
    )
    parser.add_argument(
        "--health-checking",
        type=parse_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="also answer grpc.health.v1 on the ext_proc port (default true; GIE's default is false)",
    )
    parser.add_argument(
        "--metrics-staleness-threshold",
        default="2s",
        help="endpoints with older metrics are left out of the inference_pool_* gauges (default 2s)",
    )
    parser.add_argument(
        "--metrics-aliases",
        action="append",
        default=[],
        choices=sorted(NAME_SETS),
        help="also expose the metrics under these names (repeatable): llm-d = llm-d router's llm_d_epp_*, "
        "llm-d-scheduler = llm-d-inference-scheduler's llm_d_inference_scheduler_* (doubles the series)",
    )
    parser.add_argument(
        "--legacy-error-prefix",
        action="store_true",
        help="prefix error messages 'inference gateway:' as GIE v1.0-v1.4 did (default 'inference error:')",
    )


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    gieflags.refuse_unsupported(args)
    config = _config_from_args(args)
    if config.discovery is not None:
        _check_no_other_source(args, config.discovery)
        pool, selector = None, None
        pool_name = args.pool_name or "epp"  # llm-d's name for a pool without Kubernetes
    else:
        pool = k8s_discovery.pool_ref_from_args(args, args.endpoints_file is not None or bool(args.endpoint))
        selector = k8s_discovery.selector_from_args(args)
        pool_name = pool.name if pool is not None else selector.name if selector is not None else "standalone"
    endpoint_auth = metrics_auth.enabled_from_args(args, in_cluster=pool is not None)
    return ServeOptions(
        host=args.host,
        grpc_port=args.grpc_port,
        grpc_health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        endpoints_file=args.endpoints_file,
        envoy_eds_file=args.envoy_eds_file,
        endpoints=args.endpoint,
        models=args.model,
        refresh_metrics_interval=_positive_duration(
            "--refresh-metrics-interval", args.refresh_metrics_interval
        ),
        metrics_overdue_intervals=_non_negative(
            "--metrics-overdue-intervals", args.metrics_overdue_intervals
        ),
        metrics_staleness=_positive_duration(
            "--metrics-staleness-threshold", args.metrics_staleness_threshold
        ),
        shutdown_grace=parse_duration(args.shutdown_grace),
        drain_window=_non_negative_duration("--drain-timeout", args.drain_timeout),
        grpc_message_limits=(args.grpc_max_recv_msg_size, args.grpc_max_send_msg_size),
        grpc_stream_metrics=args.enable_grpc_stream_metrics,
        max_concurrent_streams=_non_negative("--max-concurrent-streams", args.max_concurrent_streams),
        max_event_loop_lag=_non_negative_duration("--max-event-loop-lag", args.max_event_loop_lag),
        max_queue_wait=_non_negative_duration("--max-queue-wait", args.max_queue_wait),
        queue_wait_target=_non_negative_duration("--queue-wait-target", args.queue_wait_target),
        queue_wait_interval=_queue_wait_interval(args),
        rate_limit_quota=_rate_limit_quota(args),
        pool_gauges_refresh=parse_duration(args.refresh_prometheus_metrics_interval),
        health_checking=args.health_checking,
        ready_file=args.ready_file,
        pool_name=pool_name,
        pool=pool,
        selector=selector,
        kubeconfig=args.kubeconfig,
        tls_options=tls.options_from_args(args),
        leader_election=_leader_election(args, pool),
        metrics_auth=endpoint_auth,
        metrics_tls=metrics_secure.context_from_args(args, endpoint_auth),
        config=config,
        objectives=load_objectives_file(args.objectives_file) if args.objectives_file else {},
        model_rewrites=load_model_rewrites_file(args.model_rewrites_file) if args.model_rewrites_file else [],
        metrics_aliases=tuple(dict.fromkeys(args.metrics_aliases)),
        scrape_overrides=gieflags.scrape_overrides(args),
        model_server_metrics_port=args.model_server_metrics_port or None,
        observe=observe_flags.options_from_args(args),
        replicas=replica_flags.options_from_args(args),
        stream=StreamOptions(
            max_body_bytes=_at_least_one("--max-body-bytes", args.max_body_bytes),
            max_json_containers=_non_negative("--max-json-containers", args.max_json_containers),
            error_prefix="inference gateway" if args.legacy_error_prefix else "inference error",
            served_header=_served_header(args.served_header),
            use_subset_hint=not args.disable_endpoint_subset_filter,
            read_streamed_responses=args.read_streamed_responses,
            queue_message_timeout=_non_negative_duration(
                "--queue-message-timeout", args.queue_message_timeout
            ),
            emit_endpoint_scores=args.emit_endpoint_scores,
        ),
    )


def _leader_election(
    args: argparse.Namespace, pool: k8s_discovery.PoolRef | None
) -> election.LeaseTiming | None:
    timing = election.timing_from_args(args)
    if timing is not None and pool is None:
        raise ValueError("--ha-enable-leader-election needs --pool-name (the Lease is per pool)")
    return timing


def _flag_duration(flag: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def _positive_duration(flag: str, text: str) -> float:
    seconds = _flag_duration(flag, text)
    if seconds <= 0:
        raise ValueError(f"{flag} must be a positive duration, not {text!r}")
    return seconds


def _non_negative_duration(flag: str, text: str) -> float:
    seconds = _flag_duration(flag, text)
    if seconds < 0:
        raise ValueError(f"{flag} must be 0 (off) or a positive duration, not {text!r}")
    return seconds


def _rate_limit_quota(args: argparse.Namespace) -> bool:
    if args.rate_limit_quota and not parse_duration(args.queue_wait_target):
        raise ValueError(
            "--rate-limit-quota needs --queue-wait-target (e.g. 50ms): the quota follows that controller's "
            "refusals"
        )
    if args.rate_limit_quota and args.workers > 1:
        raise ValueError(
            "--rate-limit-quota with --workers: the gateway's quota stream reaches one worker, which "
            "measures only its own share of the load; run one process per EPP"
        )
    return bool(args.rate_limit_quota)


def _queue_wait_interval(args: argparse.Namespace) -> float:
    interval = _positive_duration("--queue-wait-interval", args.queue_wait_interval)
    target = parse_duration(args.queue_wait_target)
    if target > 0 and interval <= target:
        raise ValueError(
            f"--queue-wait-interval ({args.queue_wait_interval}) must be longer than "
            f"--queue-wait-target ({args.queue_wait_target})"
        )
    return interval


def _check_no_other_source(args: argparse.Namespace, plugin: str) -> None:
    """The config's discovery plugin is where endpoints come from; --pool-name only names them."""
    given = [
        flag
        for flag, present in (
            ("--endpoint-selector", args.endpoint_selector is not None),
            ("--endpoints-file", args.endpoints_file is not None),
            ("--endpoint", bool(args.endpoint)),
        )
        if present
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)}: the config's dataLayer.discovery ({plugin}) already says where the "
            "endpoints come from; give one or the other"
        )


def _config_from_args(args: argparse.Namespace) -> PickerConfig:
    config = (
        load_config_file(args.config_file, args.strict_config)
        if args.config_file
        else load_config(args.config_text, args.strict_config)
    )
    warning = check_experimental(config, args.allow_experimental_plugins, args.strict_config)
    if warning is not None:
        log.warning("%s", warning)
    return config


# An HTTP field name (RFC 9110's token): Envoy refuses a header mutation with any other name.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _served_header(name: str | None) -> str | None:
    """The name checked at startup: one Envoy refuses fails every request at the gateway with 503
    "the endpoint picker is unreachable or failed" (header_mutation_set_contains_invalid_character),
    one its default mutation rules ignore (`host`, `x-envoy*`) never reaches a client, nor does
    (or worse) a header of the connection or of the framing (`_FRAMING_HEADERS`)."""
    if name and _FIELD_NAME.fullmatch(name) is None:
        raise ValueError(
            f"--served-header {name!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
        )
    if name and (name.lower() == "host" or name.lower().startswith("x-envoy")):
        raise ValueError(
            f"--served-header {name!r} is dropped by Envoy: its ext_proc filter ignores a mutation "
            "of host or of x-envoy* headers (use another name, e.g. x-epp-destination)"
        )
    if name and name.lower() in _FRAMING_HEADERS:
        raise ValueError(
            f"--served-header {name!r} is a header of the connection or of the message's framing "
            f"({', '.join(sorted(_FRAMING_HEADERS))}): Envoy drops it, or sends it and HTTP/2 "
            "clients fail every response (te); use another name, e.g. x-epp-destination"
        )
    return name


# Measured through the stack's Envoy (1.40), a response header set by ext_proc under one of these
# names: content-length, transfer-encoding, connection, upgrade and proxy-connection never reach
# the client; keep-alive reaches HTTP/1.1 clients only; te reaches them too, and fails HTTP/2
# ones (curl: "stream 1 was not closed cleanly: PROTOCOL_ERROR"). RFC 9113 forbids all but
# content-length in HTTP/2, where an endpoint's address is no value for content-length anyway.
_FRAMING_HEADERS = frozenset(
    ("connection", "content-length", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade")
)


def _at_least_one(flag: str, value: int) -> int:
    """A limit with no "off": 0 or less would refuse every request body with 413."""
    if value < 1:
        raise ValueError(f"{flag} must be at least 1, not {value}")
    return value


def _non_negative(flag: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{flag} must be 0 (no limit) or more, not {value}")
    return value


async def serve_until_signalled(picker: EndpointPicker) -> None:
    """Serve until SIGTERM/SIGINT, or until the picker fails (leadership lost)."""
    stop = stop_event()
    loop = type(asyncio.get_running_loop())
    log.info("event loop: %s.%s", loop.__module__, loop.__qualname__)
    try:
        await picker.start(before_serving=freeze_startup_objects)
        signalled = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(picker.failed.wait())
        await asyncio.wait({signalled, failed}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        failed.cancel()
    finally:
        on_stop_signal(picker.end_drain)  # a second signal: stop without the rest of the window
        await picker.stop()


def freeze_startup_objects() -> None:
    """Move what startup made (modules, plugins, protobuf descriptors, the config: most of the
    EPP's ~120k objects) out of the collector's reach. They live as long as the process, yet every
    full collection walked them all: under load, one every few seconds, each long enough to stall
    the requests in flight. After this, collections scan only what requests leave behind. Done by
    the `epp serve` process itself, not by `EndpointPicker.start` (tests start pickers in process),
    and before it serves: the collection itself stalls the loop (over a second on a loaded
    machine), which after readiness held the first requests and made the overload guard answer
    the next ones 429."""
    gc.collect()
    gc.freeze()


def run(args: argparse.Namespace) -> int:
    gieflags.apply(args)
    if args.workers > 1:
        return _run_workers(args)
    try:
        picker = EndpointPicker(options_from_args(args))
        eventloop.run(serve_until_signalled(picker), args.event_loop)
    except (DiscoveryError, ValueError, OSError, KubeConfigError) as exc:
        log.error("%s", exc)
        return 2
    if picker.failed.is_set():
        log.error("exiting: leader election lost (the pod restarts and campaigns again, as GIE's EPP)")
        return 1
    return 0


def worker_plan(count: int, options: ServeOptions, log_level: str = "INFO") -> WorkerPlan:
    """The supervisor's plan; it waits for a worker's whole stop (drain window, then grace), and
    starts each worker at its own `epp --log-level`."""
    from epp.replicas.workers import WorkerPlan

    return WorkerPlan(
        workers=count,
        host=options.host,
        grpc_port=options.grpc_port,
        health_port=options.grpc_health_port,
        metrics_port=options.metrics_port,
        ready_file=options.ready_file,
        sync_url=options.replicas.sync_url,
        replica_id=options.replicas.replica_id or f"{socket.gethostname()}-{os.getpid()}",
        shutdown_grace=options.drain_window + options.shutdown_grace,
        log_level=log_level,
    )


def _run_workers(args: argparse.Namespace) -> int:
    """`--workers N`: a supervisor of N `epp serve` processes sharing the ports (epp.replicas.workers)."""
    from epp.replicas import workers

    try:
        options = options_from_args(args)  # refuse bad flags here, once, rather than in N workers
    except (DiscoveryError, ValueError, OSError, KubeConfigError) as exc:
        log.error("%s", exc)
        return 2
    last_port = options.metrics_port + args.workers - 1  # worker i listens on --metrics-port + i
    if options.metrics_port and last_port > 65535:
        log.error("--metrics-port %d with --workers %d: the last worker's would be %d, past 65535",
                  options.metrics_port, args.workers, last_port)  # fmt: skip
        return 2
    plan = worker_plan(args.workers, options, args.log_level)

    async def supervise() -> int:
        return await workers.Supervisor(plan, workers.serve_argv()).run(stop_event())

    try:
        return eventloop.run(supervise(), args.event_loop)
    except eventloop.UnavailableLoop as exc:
        log.error("%s", exc)
        return 2
