"""Turn a loaded config into live objects: plugin instances, the plugin scheduler, the
request-control hooks, admission, and the metrics scraper's settings; and the director that runs
them. `epp serve` and every benchmark engine build through `build_director`, so a benchmark runs
exactly what the server runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.config.model import BandSpec, FlowControlSpec, PickerConfig
from epp.datalayer import (
    AsyncDataProducer,
    DataProducer,
    DataSource,
    EndpointObserver,
    MetricsExtractor,
    MetricsSource,
)
from epp.datalayer.scraper import ScrapeSettings
from epp.datastore import Datastore
from epp.flowcontrol import (
    Admission,
    AdmitAll,
    EvictionFilterPolicy,
    EvictionOrderingPolicy,
    FairnessPolicy,
    LegacyAdmission,
    OrderingPolicy,
    SaturationDetector,
    UsageLimitPolicy,
)
from epp.flowcontrol.controller import BandConfig, FlowControlConfig, FlowController
from epp.flowcontrol.eviction import RequestEvictor
from epp.flowcontrol.queues import BandLimits
from epp.framework import DataConsumer, Plugin, PluginContext, PluginUser
from epp.requestcontrol import Director, Parsers, RequestControlHooks, RequestParser
from epp.scheduling.framework import Filter, Picker, PluginScheduler, ProfileHandler, SchedulerProfile, Scorer


@dataclass(frozen=True)
class EndpointPickerComponents:
    plugins: Mapping[str, Plugin]
    scheduler: PluginScheduler
    hooks: RequestControlHooks
    saturation_detector: SaturationDetector
    scrape: ScrapeSettings | None  # None: the config turned scraping off
    parsers: Parsers


def build_components(config: PickerConfig, context: PluginContext) -> EndpointPickerComponents:
    """The loader checked every role, so a failed `_role` check here is a bug, not bad input."""
    plugins = {name: spec.cls(name, spec.params, context) for name, spec in config.plugins.items()}
    for (consumer, key_name), producer in config.producer_bindings.items():
        reader = _role(plugins[consumer], DataConsumer)
        key = next(k for k in reader.consumes if k.name == key_name)
        reader.bind_producer(key, producer)
    for plugin in plugins.values():
        if isinstance(plugin, PluginUser):
            plugin.use_plugins(plugins)
    for source, extractors in config.data_sources.items():
        _role(plugins[source], DataSource).use_extractors([plugins[name] for name in extractors])
    profiles = [
        SchedulerProfile(
            profile.name,
            [_role(plugins[name], Filter) for name in profile.filters],
            [(_role(plugins[name], Scorer), weight) for name, weight in profile.scorers],
            _role(plugins[profile.picker], Picker),
            context.metrics,
        )
        for profile in config.profiles
    ]
    scheduler = PluginScheduler(
        _role(plugins[config.profile_handler], ProfileHandler),
        profiles,
        [_role(plugins[name], DataProducer) for name in config.producer_order],
        context.metrics,
    )
    hooks = RequestControlHooks(list(plugins.values()), context.metrics)
    detector = _role(plugins[config.saturation_detector], SaturationDetector)
    parsers = Parsers([_role(plugins[name], RequestParser) for name in config.parsers])
    return EndpointPickerComponents(
        plugins, scheduler, hooks, detector, _scrape_settings(config, plugins), parsers
    )


def build_director(
    config: PickerConfig,
    datastore: Datastore,
    context: PluginContext,
    objectives: Mapping[str, int] | None = None,
    director_type: type[Director] = Director,
    pool_name: str = "standalone",
) -> tuple[Director, EndpointPickerComponents]:
    """The director for `config` over `datastore`, with its plugins told of endpoints that leave
    the pool. `director_type` lets a benchmark narrow how candidates are found (a fixed pool)."""
    components = build_components(config, context)
    for plugin in components.plugins.values():
        if isinstance(plugin, EndpointObserver):
            datastore.subscribe(on_removed=plugin.endpoint_removed)
    flow_control: FlowController | None = None
    admission: Admission = LegacyAdmission(components.saturation_detector)
    if config.flow_control_spec is not None:
        # GIE: with the gate on, flow control replaces legacy admission (nothing is shed at once).
        flow_control = _flow_controller(config.flow_control_spec, components, datastore, context, pool_name)
        admission = AdmitAll()
    director = director_type(
        datastore,
        components.scheduler,
        components.hooks,
        admission,
        objectives,
        context.metrics,
        context.rng,
        components.parsers,
        async_producers=_async_producers(config, components.plugins),
        flow_control=flow_control,
    )
    return director, components


def _async_producers(config: PickerConfig, plugins: Mapping[str, Plugin]) -> list[AsyncDataProducer]:
    """Awaited in the producers' dependency order: one reading another's data runs after it."""
    rank = {name: i for i, name in enumerate(config.producer_order)}
    found = [p for p in plugins.values() if isinstance(p, AsyncDataProducer)]
    return sorted(found, key=lambda p: rank.get(p.name, len(rank)))


def _flow_controller(
    spec: FlowControlSpec,
    components: EndpointPickerComponents,
    datastore: Datastore,
    context: PluginContext,
    pool_name: str,
) -> FlowController:
    plugins = components.plugins

    def band(b: BandSpec) -> BandConfig:
        return BandConfig(
            BandLimits(b.max_bytes, b.max_requests),
            _role(plugins[b.fairness], FairnessPolicy),
            _role(plugins[b.ordering], OrderingPolicy),
        )

    config = FlowControlConfig(
        default_band=band(spec.default_band),
        bands={priority: band(b) for priority, b in spec.bands.items()},
        max_bytes=spec.max_bytes,
        max_requests=spec.max_requests,
        default_request_ttl=spec.default_request_ttl,
    )
    detector = _role(plugins[spec.saturation_detector], SaturationDetector)
    controller = FlowController(
        config,
        detector,
        _role(plugins[spec.usage_limit_policy], UsageLimitPolicy),
        datastore.ready_endpoints,
        context.metrics.flow_control,
        pool_name,
        context.clock,
        lambda: datastore.staged,
    )
    if spec.eviction is not None:
        accepts, ordering = spec.eviction
        evictor = RequestEvictor(
            _role(plugins[ordering], EvictionOrderingPolicy),
            _role(plugins[accepts], EvictionFilterPolicy),
            context.clock,
        )
        controller.enable_eviction(evictor, detector.type_name)
    return controller


def _role(plugin: Plugin, role: type) -> Any:
    """`plugin`, checked to implement `role` (typed Any: mypy cannot take abstract classes as type[T])."""
    if not isinstance(plugin, role):
        raise TypeError(f"{plugin!r} is not a {role.__name__}")
    return plugin


def _scrape_settings(config: PickerConfig, plugins: Mapping[str, Plugin]) -> ScrapeSettings | None:
    if config.metrics_source is None or config.metrics_extractor is None:
        return None
    source, extractor = plugins[config.metrics_source], plugins[config.metrics_extractor]
    assert isinstance(source, MetricsSource) and isinstance(extractor, MetricsExtractor)
    scheme, path, insecure = source.url_parts()
    return ScrapeSettings(
        scheme,
        path,
        insecure,
        extractor.engines(),
        extractor.default_engine(),
        extractor.engine_label_key(),
        source.type_name,
        extractor.type_name,
    )
