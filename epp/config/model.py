"""A loaded, validated EndpointPickerConfig with every system default filled in: what the EPP
will actually run. Built by `epp.config.loader`, turned into live objects by `epp.config.build`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.config.schema import FlowControlDoc
from epp.framework import Plugin, PluginParams


@dataclass(frozen=True)
class PluginSpec:
    name: str
    type_name: str  # the canonical type, even when the config used an alias
    cls: type[Plugin]
    params: PluginParams
    implicit: bool = False  # added by a system default, not written in the config


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    filters: tuple[str, ...]
    scorers: tuple[tuple[str, float], ...]  # (plugin, weight)
    picker: str


@dataclass(frozen=True)
class BandSpec:
    max_bytes: int  # 0 = unlimited
    max_requests: int  # 0 = unlimited
    fairness: str  # plugin names
    ordering: str


@dataclass(frozen=True)
class FlowControlSpec:
    """The `flowControl` section resolved (feature gate on): limits, TTL and policy plugins."""

    default_band: BandSpec
    bands: Mapping[int, BandSpec]
    max_bytes: int
    max_requests: int
    default_request_ttl: float
    usage_limit_policy: str
    saturation_detector: str
    # llm-d router's enableEviction: the eviction (filter, ordering) policy plugins; None: off.
    eviction: tuple[str, str] | None = None


@dataclass(frozen=True)
class PickerConfig:
    api_version: str
    plugins: Mapping[str, PluginSpec]  # in config order, implicit ones last
    profiles: tuple[ProfileSpec, ...]
    profile_handler: str
    saturation_detector: str
    metrics_source: str | None  # None: the config disabled metrics scraping
    metrics_extractor: str | None
    parsers: tuple[str, ...]  # request parser plugins; resolved per request path
    feature_gates: frozenset[str]
    flow_control: FlowControlDoc | None
    producer_bindings: Mapping[tuple[str, str], str]  # (consumer plugin, data key) -> producer plugin
    producer_order: tuple[str, ...]  # producers, each after those whose data it reads
    warnings: tuple[str, ...] = ()
    flow_control_spec: FlowControlSpec | None = None  # set: the flowControl feature gate is on
    # dataLayer sources besides the metrics page (DataSource plugins) -> the extractors wired to each
    data_sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    discovery: str | None = None  # llm-d's dataLayer.discovery: the EndpointDiscovery plugin
    # llm-d's haPopulateNonLeaderDatastore gate (default on): with leader election, a standby
    # routes the requests that reach it; off, it answers them 503 as the router's empty standby does.
    standby_routes: bool = True

    @property
    def parser(self) -> str:
        """The first (usually only) parser."""
        return self.parsers[0]

    def summary(self) -> str:
        """One line per plugin and profile, for the startup log."""
        lines = []
        for spec in self.plugins.values():
            params = spec.params.model_dump(by_alias=True, exclude_unset=True)
            implicit = " (default)" if spec.implicit else ""
            lines.append(f"plugin {spec.name}: {spec.type_name}{implicit} {params or ''}".rstrip())
        for profile in self.profiles:
            scorers = ", ".join(f"{name} (weight {weight:g})" for name, weight in profile.scorers)
            lines.append(
                f"profile {profile.name}: filters [{', '.join(profile.filters)}] scorers [{scorers}] "
                f"picker {profile.picker}"
            )
        lines.append(
            f"profile handler {self.profile_handler}; saturation detector {self.saturation_detector}"
        )
        return "\n".join(lines)
