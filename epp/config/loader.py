"""Load an EndpointPickerConfig: decode strictly, validate every plugin's parameters and every
reference, then add GIE's system defaults (profile handler, pickers, saturation detector, data
layer, data producers) so the result says exactly what will run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import yaml
from pydantic import ValidationError

from epp.compiled import safe_yaml_documents
from epp.config.k8s_objects import read_text
from epp.config.model import BandSpec, FlowControlSpec, PickerConfig, PluginSpec, ProfileSpec
from epp.config.schema import (
    BandLimitsDoc,
    DataLayerDoc,
    EndpointPickerConfigDoc,
    FlowControlDoc,
    ProfileDoc,
    SaturationDetectorDoc,
)
from epp.config.unavailable import TEST_ONLY_FEATURE_GATES, unavailable
from epp.datalayer import (
    DataProducer,
    DataSource,
    EndpointDiscovery,
    KubernetesObjectObserver,
    KubernetesSource,
    MetricsExtractor,
    MetricsSource,
)
from epp.flowcontrol import FairnessPolicy, OrderingPolicy, SaturationDetector, UsageLimitPolicy
from epp.framework import DataConsumer, DataKey, ImpliedPlugin, ParameterUpgrade, Plugin, PluginUser
from epp.framework.registry import canonical_type_names, find_plugin_type, plugin_types
from epp.params.strict import ConfigError, closest_field, describe, lenient_unknown_fields
from epp.requestcontrol import RequestParser
from epp.requestcontrol.hooks import effective_parsers
from epp.scheduling.framework import Filter, Picker, ProfileHandler, Scorer

DEFAULT_CONFIG_RESOURCE = "default-plugins.yaml"
SINGLE_PROFILE_HANDLER = "single-profile-handler"
DEFAULT_PICKER = "max-score-picker"
DEFAULT_SATURATION_DETECTOR = "utilization-detector"
DEFAULT_METRICS_SOURCE = "metrics-data-source"
DEFAULT_METRICS_EXTRACTOR = "core-metrics-extractor"
DEFAULT_OBJECT_SOURCE = "k8s-notification-source"
DEFAULT_PARSER = "openai-parser"
DEFAULT_FAIRNESS_POLICY = "global-strict-fairness-policy"
DEFAULT_ORDERING_POLICY = "fcfs-ordering-policy"
DEFAULT_USAGE_LIMIT_POLICY = "static-usage-limit-policy"
EVICTION_FILTER_POLICY = "sheddable-eviction-filter"
EVICTION_ORDERING_POLICY = "priority-then-time-eviction-order-policy"
DEFAULT_BAND_MAX_BYTES = 1_000_000_000  # GIE: a band's maxBytes when 0 or omitted

KNOWN_FEATURE_GATES = (
    "flowControl",
    "enableLegacyMetrics",
    "dataLayer",
    "prepareDataPlugins",
    "haPopulateNonLeaderDatastore",  # llm-d router, on by default: standbys keep a datastore and route
)


def default_config_text() -> str:
    """GIE's built-in default (v1.4+): queue 2, KV cache 2, prefix cache 3, max-score picker."""
    return resources.files("epp.config").joinpath(DEFAULT_CONFIG_RESOURCE).read_text()


def load_config(text: str | None = None, strict: bool = False) -> PickerConfig:
    """Parse and validate config YAML; None means GIE's default. Raises ConfigError.

    Lenient where the Go EPPs are (unknown plugin parameters, older names): each such leniency is
    a warning in the result. `strict` turns every warning into an error."""
    source = default_config_text() if text is None else text
    raw = _single_document(source)
    if not isinstance(raw, dict):
        raise ConfigError("invalid EndpointPickerConfig: expected a YAML mapping with apiVersion and kind")
    try:
        doc = EndpointPickerConfigDoc.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(describe(exc)) from None
    config = _Loader(doc, strict).load()
    if strict and config.warnings:
        raise _config_error(f"{w} (an error with strict config checking)" for w in config.warnings)
    return config


def _single_document(source: str) -> Any:
    """The config's one YAML document. Empty documents are skipped, so a file ending in `---` (as
    one cut from a multi-document manifest) loads, as in Go; a second document with content is
    refused by its line, where Go would read the first and silently drop the rest."""
    try:
        documents = safe_yaml_documents(source)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid EndpointPickerConfig: not valid YAML: {exc}") from None
    if len(documents) > 1:
        lines = [n.start_mark.line + 1 for n in yaml.compose_all(source) if n is not None]
        raise ConfigError(
            f"invalid EndpointPickerConfig: the file holds {len(documents)} YAML documents (lines "
            f"{', '.join(map(str, lines))}); it must hold one EndpointPickerConfig"
        )
    return documents[0] if documents else None


def load_config_file(path: Path, strict: bool = False) -> PickerConfig:
    return load_config(read_text(path, "config"), strict)


def _config_error(problems: Iterable[str]) -> ConfigError:
    lines = list(problems)
    if len(lines) == 1:
        return ConfigError(f"invalid EndpointPickerConfig: {lines[0]}")
    return ConfigError("invalid EndpointPickerConfig:\n  " + "\n  ".join(lines))


class _Loader:
    def __init__(self, doc: EndpointPickerConfigDoc, strict: bool = False) -> None:
        self.doc = doc
        self.strict = strict
        self.plugins: dict[str, PluginSpec] = {}
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.data_sources: dict[str, tuple[str, ...]] = {}  # dataLayer source -> its extractors
        self.discovery: str | None = None

    def load(self) -> PickerConfig:
        self._feature_gates()
        self._check()
        self._define_plugins()
        self._check()
        self._check_plugin_references()
        profiles = self._profiles()
        self._check()
        handler = self._profile_handler(profiles)
        detector = self._saturation_detector()
        source, extractor = self._data_layer()
        self._object_observers()
        parsers = self._parsers()
        flow_control = self._flow_control(detector)
        self._check()
        bindings = self._bind_producers()
        self._check()
        producer_order = self._producer_order(bindings)
        self._check()
        return PickerConfig(
            api_version=self.doc.api_version,
            plugins=self.plugins,
            profiles=tuple(profiles),
            profile_handler=handler,
            saturation_detector=detector,
            metrics_source=source,
            metrics_extractor=extractor,
            parsers=parsers,
            feature_gates=frozenset(name for name, on in _gates(self.doc.feature_gates).items() if on),
            flow_control=self.doc.flow_control,
            producer_bindings=bindings,
            producer_order=producer_order,
            warnings=tuple(self.warnings),
            flow_control_spec=flow_control,
            data_sources=self.data_sources,
            discovery=self.discovery,
            standby_routes=_gates(self.doc.feature_gates).get("haPopulateNonLeaderDatastore", True),
        )

    def _check(self) -> None:
        if self.problems:
            raise _config_error(self.problems)

    # --- plugins --------------------------------------------------------------------------------

    def _feature_gates(self) -> None:
        for i, gate in enumerate(self.doc.feature_gates):
            name, assigned, value = (part.strip() for part in gate.partition("="))
            if assigned and value.lower() not in _GATE_VALUES:
                self.problems.append(
                    f"featureGates[{i}]: {value!r} is not a valid value for the feature gate {name!r} "
                    "(true or false, as Go's strconv.ParseBool reads them: 1, t, true, 0, f, false, any case)"
                )
            if name in KNOWN_FEATURE_GATES:
                continue
            if name in TEST_ONLY_FEATURE_GATES:
                self.problems.append(
                    f"featureGates[{i}]: {name!r} is a test-only gate of the upstream Go config-loader tests"
                )
                continue
            closest = closest_field(name, list(KNOWN_FEATURE_GATES))
            hint = f"; did you mean {closest!r}?" if closest else ""
            known = ", ".join(KNOWN_FEATURE_GATES)
            self.problems.append(f"featureGates[{i}]: unknown feature gate {name!r} (known: {known}){hint}")

    def _define_plugins(self) -> None:
        implied: list[tuple[str, ImpliedPlugin]] = []
        for i, plugin in enumerate(self.doc.plugins):
            name = plugin.name or plugin.type
            cls = find_plugin_type(plugin.type)
            if cls is None:
                self.problems.append(f"plugins[{i}].type: {_unknown_type(plugin.type)}")
                continue
            if name in self.plugins:
                self.problems.append(f"plugins[{i}].name: duplicate plugin name {name!r}")
                continue
            if plugin.type != cls.type_name:
                self.warnings.append(
                    f"plugins[{i}].type: {plugin.type!r} is a deprecated name of {cls.type_name!r}"
                )
            cls, upgrade = _upgrade(cls, plugin.parameters or {}, plugin.type)
            path = f"plugins[{i}].parameters"
            self.warnings.extend(f"{path}: {warning}" for warning in upgrade.warnings)
            self.problems.extend(f"{path}: {problem}" for problem in upgrade.problems)
            try:
                params = self._parameters(cls, upgrade.parameters, path)
            except ValidationError as exc:
                self.problems.extend(describe(exc, path))
                continue
            self.plugins[name] = PluginSpec(name, cls.type_name, cls, params)
            implied.extend((f"plugins[{i}]", p) for p in upgrade.implied)
        for path, wanted in implied:
            if wanted.type_name not in self.plugins:
                self._implicit(wanted.type_name, wanted.parameters)
            elif self.plugins[wanted.type_name].type_name != wanted.type_name:
                self.problems.append(
                    f"{path}.parameters: the name {wanted.type_name!r} is needed for the "
                    f"{wanted.type_name} its legacy parameters stand for, but another plugin has it"
                )

    def _parameters(self, cls: type[Plugin], raw: Mapping[str, Any], path: str) -> Any:
        """Go decodes plugin parameters with json.Unmarshal: unknown fields are ignored. Here they
        are warnings naming the closest known field (errors with strict checking)."""
        if self.strict:
            return cls.Params.model_validate(raw)
        with lenient_unknown_fields() as dropped:
            params = cls.Params.model_validate(raw)
        self.warnings.extend(f"{path}: {message}" for message in dropped)
        return params

    def _implicit(self, type_name: str, parameters: Mapping[str, Any] | None = None) -> str:
        """Add a default plugin named after its type (as GIE does) and return its name."""
        cls = _known_type(type_name)
        existing = self.plugins.get(type_name)
        if existing is not None:
            if existing.cls is not cls:
                self.problems.append(
                    f"plugins: the name {type_name!r} is needed for a default {type_name} plugin but is "
                    f"taken by a {existing.type_name} plugin; rename it"
                )
            return type_name
        params = cls.Params.model_validate(parameters or {})
        self.plugins[type_name] = PluginSpec(type_name, type_name, cls, params, implicit=True)
        return type_name

    def _first_of_type(self, type_name: str) -> str | None:
        return next((s.name for s in self.plugins.values() if s.type_name == type_name), None)

    def _ref(self, path: str, name: str, role: type, role_text: str) -> str | None:
        """Check that `name` is a defined plugin of the given role; report and return None if not."""
        spec = self.plugins.get(name)
        if spec is None:
            self.problems.append(f"{path}: no plugin named {name!r} (defined: {_names(self.plugins)})")
            return None
        if not issubclass(spec.cls, role):
            self.problems.append(f"{path}: plugin {name!r} is a {spec.type_name}, not {role_text}")
            return None
        return name

    def _check_plugin_references(self) -> None:
        for i, spec in enumerate(list(self.plugins.values())):
            if issubclass(spec.cls, PluginUser):
                for ref in spec.cls.referenced_plugins(spec.params):
                    self._ref(f"plugins[{i}].parameters.{ref.parameter}", ref.plugin, ref.role, ref.role_text)

    # --- scheduling profiles --------------------------------------------------------------------

    def _profiles(self) -> list[ProfileSpec]:
        docs = self.doc.scheduling_profiles or [self._default_profile()]
        seen: set[str] = set()
        profiles = []
        for i, doc in enumerate(docs):
            if doc.name in seen:
                self.problems.append(f"schedulingProfiles[{i}].name: duplicate profile name {doc.name!r}")
            seen.add(doc.name)
            profile = self._profile(i, doc)
            if profile is not None:
                profiles.append(profile)
        return profiles

    def _default_profile(self) -> ProfileDoc:
        """GIE (v1.4+) without schedulingProfiles: one profile `default` running every configured
        filter, scorer and picker (scorers at weight 1), in config order."""
        members = [
            s.name
            for s in self.plugins.values()
            if not s.implicit and issubclass(s.cls, (Filter, Scorer, Picker))
        ]
        self.warnings.append(
            "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and "
            f"picker ({', '.join(members) or 'none'}), as GIE does"
        )
        return ProfileDoc.model_validate({"name": "default", "plugins": [{"pluginRef": m} for m in members]})

    def _profile(self, index: int, doc: ProfileDoc) -> ProfileSpec | None:
        filters: list[str] = []
        scorers: list[tuple[str, float]] = []
        pickers: list[str] = []
        for j, entry in enumerate(doc.plugins):
            path = f"schedulingProfiles[{index}].plugins[{j}].pluginRef"
            spec = self.plugins.get(entry.plugin_ref)
            if spec is None:
                self.problems.append(
                    f"{path}: no plugin named {entry.plugin_ref!r} (defined: {_names(self.plugins)})"
                )
            elif issubclass(spec.cls, (Filter, Scorer, Picker)):
                # As GIE's SchedulerProfile.AddPlugins: a plugin takes every role it implements.
                if issubclass(spec.cls, Filter):
                    filters.append(spec.name)
                if issubclass(spec.cls, Scorer):
                    scorers.append((spec.name, 1.0 if entry.weight is None else entry.weight))
                if issubclass(spec.cls, Picker):
                    pickers.append(spec.name)
            else:
                # GIE's SchedulerProfile.AddPlugins skips what is none of the three.
                self.warnings.append(
                    f"{path}: plugin {spec.name!r} is a {spec.type_name}, which is not a filter, scorer or "
                    "picker: ignored in the profile (as GIE)"
                )
        if len(pickers) > 1:
            self.problems.append(
                f"schedulingProfiles[{index}]: profile {doc.name!r} has {len(pickers)} pickers "
                f"({', '.join(pickers)}); a profile takes one"
            )
        picker = (
            pickers[0] if pickers else self._first_of_type(DEFAULT_PICKER) or self._implicit(DEFAULT_PICKER)
        )
        return ProfileSpec(doc.name, tuple(filters), tuple(scorers), picker)

    def _profile_handler(self, profiles: list[ProfileSpec]) -> str:
        handlers = [s for s in self.plugins.values() if issubclass(s.cls, ProfileHandler)]
        if len(handlers) > 1:
            self.problems.append(
                f"plugins: exactly one profile handler is allowed, found {len(handlers)} "
                f"({', '.join(s.name for s in handlers)})"
            )
            return handlers[0].name
        if not handlers:
            if len(profiles) > 1:
                self.problems.append(
                    f"plugins: {len(profiles)} scheduling profiles need a profile handler plugin that "
                    f"runs several profiles; {SINGLE_PROFILE_HANDLER} (the default) runs exactly one"
                )
                return SINGLE_PROFILE_HANDLER
            return self._implicit(SINGLE_PROFILE_HANDLER)
        handler = handlers[0]
        names = [p.name for p in profiles]
        assert issubclass(handler.cls, ProfileHandler)
        for problem in handler.cls.profile_problems(handler.params, names):
            self.problems.append(f"plugins: {handler.name!r}: {problem}")
        if handler.type_name == SINGLE_PROFILE_HANDLER and len(profiles) > 1:
            self.problems.append(
                f"schedulingProfiles: {SINGLE_PROFILE_HANDLER} {handler.name!r} runs exactly one profile, "
                f"but {len(profiles)} are defined ({', '.join(p.name for p in profiles)})"
            )
        return handler.name

    # --- saturation detector, data layer, parser, flow control ----------------------------------

    def _saturation_detector_doc(self) -> tuple[str, SaturationDetectorDoc | None]:
        """llm-d router: `flowControl.saturationDetector` replaces the top-level key (which still
        loads); when both are given the new one wins, as there."""
        nested = self.doc.flow_control.saturation_detector if self.doc.flow_control is not None else None
        if nested is not None:
            if self.doc.saturation_detector is not None:
                self.warnings.append(
                    "saturationDetector is ignored because flowControl.saturationDetector is set "
                    "(llm-d router)"
                )
            return "flowControl.saturationDetector", nested
        return "saturationDetector", self.doc.saturation_detector

    def _saturation_detector(self) -> str:
        key, doc = self._saturation_detector_doc()
        if doc is not None and doc.plugin_ref is not None:
            ref = self._ref(f"{key}.pluginRef", doc.plugin_ref, SaturationDetector, "a saturation detector")
            return ref or doc.plugin_ref
        thresholds = doc.inline_thresholds() if doc is not None else {}
        if thresholds:
            existing = self.plugins.get(DEFAULT_SATURATION_DETECTOR)
            if existing is not None and not existing.implicit:
                self.problems.append(
                    f"{key}: inline thresholds create a utilization-detector plugin, but one "
                    f"named {DEFAULT_SATURATION_DETECTOR!r} is already defined; use pluginRef instead"
                )
                return DEFAULT_SATURATION_DETECTOR
            return self._implicit(DEFAULT_SATURATION_DETECTOR, thresholds)
        return self._first_of_type(DEFAULT_SATURATION_DETECTOR) or self._implicit(DEFAULT_SATURATION_DETECTOR)

    def _data_layer(self) -> tuple[str | None, str | None]:
        """(metrics source, extractor): as configured, or GIE's defaults when the section is absent."""
        if self.doc.data_layer is None and self.doc.data is None:
            source = self._first_of_type(DEFAULT_METRICS_SOURCE) or self._implicit(DEFAULT_METRICS_SOURCE)
            extractor = self._first_of_type(DEFAULT_METRICS_EXTRACTOR)
            return source, extractor or self._implicit(DEFAULT_METRICS_EXTRACTOR)
        if self.doc.data_layer is not None:
            return self._configured_data_layer("dataLayer", self.doc.data_layer)
        assert self.doc.data is not None
        return self._configured_data_layer("data", self.doc.data)

    def _unsupported_peer_sync(self, key: str, doc: DataLayerDoc) -> None:
        """llm-d's router has the config fields but registers no plugin type for them (only its
        tests' mocks), so a config naming one fails there too."""
        refs = [
            (f"{key}.peerDiscovery.pluginRef", doc.peer_discovery.plugin_ref if doc.peer_discovery else None),
            (f"{key}.crossReplicaSyncerPluginRef", doc.cross_replica_syncer_plugin_ref),
        ]
        for path, name in refs:
            if name:
                self.problems.append(
                    f"{path}: {name!r} would have to be a peer-discovery or cross-replica-syncer plugin; "
                    "llm-d's router registers no such type and neither does this EPP (EPP replicas share "
                    "state here with --replica-sync)"
                )

    def _configured_data_layer(self, key: str, doc: DataLayerDoc) -> tuple[str | None, str | None]:
        sources = []
        for index, source_doc in enumerate(doc.sources):
            spec = self.plugins.get(source_doc.plugin_ref)
            if spec is None or not issubclass(spec.cls, DataSource):
                sources.append(source_doc)
                continue
            refs = [
                self._ref(
                    f"{key}.sources[{index}].extractors[{number}].pluginRef",
                    extractor.plugin_ref,
                    spec.cls.extractor_role,
                    spec.cls.extractor_role_text,
                )
                for number, extractor in enumerate(source_doc.extractors)
            ]
            wired = tuple(r for r in refs if r is not None)
            if issubclass(spec.cls, KubernetesSource):
                self._check_kinds(f"{key}.sources[{index}]", spec, wired)
            self._wire(source_doc.plugin_ref, wired)
        notifications_only = bool(doc.sources) and not sources
        doc = doc.model_copy(update={"sources": sources})
        if (notifications_only or doc.discovery is not None) and doc.inject_defaults is not False:
            # llm-d router: with no metrics source listed, the default one is injected
            # (injectDefaults defaults to true there; a discovery plugin makes it llm-d's config).
            doc = doc.model_copy(update={"inject_defaults": True})
        if doc.discovery is not None:
            path, name = f"{key}.discovery.pluginRef", doc.discovery.plugin_ref
            self.discovery = self._ref(path, name, EndpointDiscovery, "an endpoint discovery plugin")
        self._unsupported_peer_sync(key, doc)
        if not doc.sources and doc.inject_defaults:
            # llm-d router: injectDefaults (default true there) adds the default source/extractor.
            default_source = self._first_of_type(DEFAULT_METRICS_SOURCE) or self._implicit(
                DEFAULT_METRICS_SOURCE
            )
            default_extractor = self._first_of_type(DEFAULT_METRICS_EXTRACTOR)
            return default_source, default_extractor or self._implicit(DEFAULT_METRICS_EXTRACTOR)
        if not doc.sources:
            self.warnings.append(f"{key} has no sources: endpoint metrics will not be scraped")
            return None, None
        if len(doc.sources) > 1:
            self.problems.append(f"{key}.sources: one metrics source is supported, got {len(doc.sources)}")
            return None, None
        path = f"{key}.sources[0]"
        source_doc = doc.sources[0]
        source = self._ref(f"{path}.pluginRef", source_doc.plugin_ref, MetricsSource, "a metrics source")
        if len(source_doc.extractors) != 1:
            self.problems.append(
                f"{path}.extractors: exactly one extractor is supported, got {len(source_doc.extractors)}"
            )
            return source, None
        extractor_ref = source_doc.extractors[0].plugin_ref
        extractor = self._ref(
            f"{path}.extractors[0].pluginRef", extractor_ref, MetricsExtractor, "a metrics extractor"
        )
        return source, extractor

    def _wire(self, source: str, extractors: tuple[str, ...]) -> None:
        self.data_sources[source] = self.data_sources.get(source, ()) + extractors

    def _check_kinds(self, path: str, source: PluginSpec, observers: tuple[str, ...]) -> None:
        assert issubclass(source.cls, KubernetesSource)
        kind = source.cls.kind_of(source.params)
        for name in observers:
            observer = self.plugins[name].cls
            assert issubclass(observer, KubernetesObjectObserver)
            if observer.watched_kind != kind:
                self.problems.append(
                    f"{path}: {name!r} observes {observer.watched_kind}, but {source.name!r} watches {kind}"
                )

    def _object_observers(self) -> None:
        """Give every plugin that needs Kubernetes objects and is not wired to a source the
        configured `k8s-notification-source` of its kind, else a new one named `<plugin>/<kind>`
        (llm-d's default-source registration)."""
        wired = {name for names in self.data_sources.values() for name in names}
        for spec in list(self.plugins.values()):
            cls = spec.cls
            if not issubclass(cls, KubernetesObjectObserver) or spec.name in wired:
                continue
            if not cls.watches_objects(spec.params):
                continue
            source = next(
                (
                    s.name
                    for s in self.plugins.values()
                    if issubclass(s.cls, KubernetesSource) and s.cls.kind_of(s.params) == cls.watched_kind
                ),
                None,
            )
            if source is None:
                kind = cls.watched_kind
                source = f"{spec.name}/{kind.kind.lower()}"
                source_cls = _known_type(DEFAULT_OBJECT_SOURCE)
                params = {"group": kind.group, "version": kind.version, "kind": kind.kind}
                self.plugins[source] = PluginSpec(
                    source, DEFAULT_OBJECT_SOURCE, source_cls, source_cls.Params.model_validate(params), True
                )
            self._wire(source, (spec.name,))

    def _parsers(self) -> tuple[str, ...]:
        """`parser` (GIE v1.5) or llm-d router's `requestHandler.parsers` (which wins when both are
        set, as there); none: an `openai-parser` (configured, else a default one)."""
        handler = self.doc.request_handler
        if handler is not None and handler.parsers:
            if self.doc.parser is not None:
                self.warnings.append("parser is ignored because requestHandler.parsers is set (llm-d router)")
            refs = [
                self._ref(f"requestHandler.parsers[{i}].pluginRef", p.plugin_ref, RequestParser, "a parser")
                for i, p in enumerate(handler.parsers)
            ]
            names = [ref for ref in refs if ref is not None]
            listed = [
                SimpleNamespace(
                    name=n,
                    type_name=self.plugins[n].type_name,
                    paths=getattr(self.plugins[n].cls, "paths", ()),
                )
                for n in names
            ]
            kept = {p.name for p in effective_parsers(listed)}
            for name in names:
                if name not in kept:
                    self.warnings.append(
                        f"requestHandler.parsers: {name!r} is skipped, as llm-d router skips a second parser "
                        "of a type and every parser after the one that claims no path (the fallback)"
                    )
            return tuple(n for n in names if n in kept)
        if self.doc.parser is not None:
            ref = self._ref("parser.pluginRef", self.doc.parser.plugin_ref, RequestParser, "a request parser")
            return (ref,) if ref is not None else ()
        return (self._first_of_type(DEFAULT_PARSER) or self._implicit(DEFAULT_PARSER),)

    def _flow_control(self, detector: str) -> FlowControlSpec | None:
        """GIE's flow-control layer, behind its feature gate. `detector`: the saturation detector
        already resolved (flowControl.saturationDetector, llm-d router's place, wins there)."""
        gate = _gates(self.doc.feature_gates).get("flowControl", False)
        section = self.doc.flow_control
        if not gate:
            # flowControl.saturationDetector alone is llm-d router's detector, not queueing.
            queueing = section is not None and bool(section.model_fields_set - {"saturation_detector"})
            if queueing:
                self.warnings.append(
                    "flowControl is ignored without the flowControl feature gate (as in GIE)"
                )
            return None
        doc = section or FlowControlDoc()
        usage = DEFAULT_USAGE_LIMIT_POLICY
        if doc.usage_limit_policy_plugin_ref:
            usage = self._policy(
                "flowControl.usageLimitPolicyPluginRef", doc.usage_limit_policy_plugin_ref, UsageLimitPolicy
            )
        else:
            usage = self._first_of_type(usage) or self._implicit(usage)
        for path, field in (
            ("noEndpointRequestTTL", "no_endpoint_request_ttl"),
            ("defaultNegativePriorityBand", "default_negative_priority_band"),
        ):
            if field in doc.model_fields_set:
                self.warnings.append(f"flowControl.{path} is not implemented here and is ignored")
        default_doc = doc.default_priority_band or BandLimitsDoc()
        default_band = self._band("flowControl.defaultPriorityBand", default_doc, None)
        bands = {
            band.priority: self._band(f"flowControl.priorityBands[{i}]", band, default_band)
            for i, band in enumerate(doc.priority_bands)
        }
        return FlowControlSpec(
            default_band=default_band,
            bands=bands,
            max_bytes=doc.max_bytes or 0,
            max_requests=doc.max_requests or 0,
            default_request_ttl=doc.default_request_ttl or 0.0,
            usage_limit_policy=usage,
            saturation_detector=detector,
            eviction=self._eviction_policies() if doc.enable_eviction else None,
        )

    def _eviction_policies(self) -> tuple[str, str]:
        """As llm-d router: in-flight eviction always uses its sheddable filter and priority-then-time
        ordering (those declared under `plugins`, else created with their defaults)."""
        accepts, ordering = (
            self._first_of_type(name) or self._implicit(name)
            for name in (EVICTION_FILTER_POLICY, EVICTION_ORDERING_POLICY)
        )
        return accepts, ordering

    def _band(self, path: str, doc: BandLimitsDoc, default: BandSpec | None) -> BandSpec:
        """A band's limits and policies; omitted policies are GIE's defaults (not the template's)."""
        fairness = self._policy(
            f"{path}.fairnessPolicyRef", doc.fairness_policy_ref or DEFAULT_FAIRNESS_POLICY, FairnessPolicy
        )
        ordering = self._policy(
            f"{path}.orderingPolicyRef", doc.ordering_policy_ref or DEFAULT_ORDERING_POLICY, OrderingPolicy
        )
        return BandSpec(doc.max_bytes or DEFAULT_BAND_MAX_BYTES, doc.max_requests or 0, fairness, ordering)

    def _policy(self, path: str, name: str, role: type) -> str:
        """A policy reference: a plugin defined under that name, or else a policy type, created
        with its defaults (GIE registers its flow-control policies under their type names)."""
        if name in self.plugins:
            return self._ref(path, name, role, f"a {_role_text(role)}") or name
        cls = _registered(name)
        if cls is None or not issubclass(cls, role):
            self.problems.append(
                f"{path}: no plugin named {name!r} and no {_role_text(role)} of that type "
                f"(defined: {_names(self.plugins)}; types: {', '.join(_types_of(role))})"
            )
            return name
        return self._implicit(name)

    # --- data producers -------------------------------------------------------------------------

    def _bind_producers(self) -> dict[tuple[str, str], str]:
        """Give every consumer one producer per data key: the one its parameter names, else the only
        one configured, else a default producer created with the parameters it shares with the
        consumer (so GIE <= v1.4 prefix parameters on prefix-cache-scorer still take effect)."""
        bindings: dict[tuple[str, str], str] = {}
        pending = [s for s in self.plugins.values() if _consumes(s)]
        while pending:
            consumer = pending.pop(0)
            for key in _consumes(consumer):
                producer = self._producer_for(consumer, key, set())
                if producer is None:
                    continue
                bindings[(consumer.name, key.name)] = producer
                spec = self.plugins[producer]
                if spec.implicit and _consumes(spec) and spec not in pending:
                    pending.append(spec)
        return bindings

    def _producer_for(self, consumer: PluginSpec, key: DataKey, visited: set[str]) -> str | None:
        param = _consumes(consumer)[key]
        field = type(consumer.params).model_fields[param] if param else None
        named = str(getattr(consumer.params, param)) if param else ""
        if field is not None and named and (named in self.plugins or named != field.default):
            return self._named_producer(consumer, key, f"{field.alias}", named, visited | {consumer.name})
        producers = [s.name for s in self.plugins.values() if _produces(s.cls, key)]
        optional = key in cast(type[DataConsumer], consumer.cls).optional_consumes
        if optional and (not producers or (len(producers) > 1 and key.default_producer not in self.plugins)):
            return None  # optional data: read when configured, never created for this reader
        if len(producers) > 1:
            # As the Go EPPs: data not asked for by producer name comes from the producer with the
            # default name, created with defaults when no configured plugin has that name.
            default = self.plugins.get(key.default_producer)
            if default is not None and not _produces(default.cls, key):
                hint = f"; name one with {field.alias}" if field is not None else ""
                self.problems.append(
                    f"plugins: {consumer.name!r} reads {key.name}, which {len(producers)} plugins produce "
                    f"({', '.join(producers)}){hint}"
                )
                return None
            if default is None:
                self.warnings.append(
                    f"plugins: {consumer.name!r} reads {key.name} from a default {key.default_producer} "
                    f"(several producers are configured: {', '.join(producers)}, none named for it)"
                )
            return key.default_producer if default is not None else self._implicit(key.default_producer)
        if producers:
            self._warn_ignored_producer_params(consumer, producers[0])
            return producers[0]
        return self._implicit(key.default_producer, self._shared_params(consumer, key.default_producer))

    def _named_producer(
        self, consumer: PluginSpec, key: DataKey, param: str, named: str, visited: set[str]
    ) -> str | None:
        spec = self.plugins.get(named)
        if spec is not None and _produces(spec.cls, key):
            self._warn_ignored_producer_params(consumer, named)
            return named
        if spec is not None and key in _consumes(spec) and named not in visited:
            # llm-d lets the parameter name another reader of the data, e.g. the prefix-cache-scorer.
            return self._producer_for(spec, key, visited)
        what = "no plugin by that name" if spec is None else f"{spec.type_name} does not provide {key.name}"
        self.problems.append(f"plugins: {consumer.name!r} parameter {param} names {named!r}: {what}")
        return None

    def _producer_order(self, bindings: Mapping[tuple[str, str], str]) -> tuple[str, ...]:
        """Producers sorted so that one reading another's data runs after it (GIE's PrepareData DAG)."""
        inputs: dict[str, set[str]] = {}
        for (consumer, _), producer in bindings.items():
            inputs.setdefault(consumer, set()).add(producer)
        ordered: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in ordered or name in visiting:
                if name in visiting:
                    self.problems.append(f"plugins: data producers form a cycle through {name!r}")
                return
            visiting.add(name)
            for dependency in sorted(inputs.get(name, ())):
                visit(dependency)
            visiting.discard(name)
            ordered.append(name)

        for spec in self.plugins.values():
            if issubclass(spec.cls, DataProducer):
                visit(spec.name)
        return tuple(ordered)

    def _shared_params(self, consumer: PluginSpec, producer_type: str) -> dict[str, Any]:
        params = _known_type(producer_type).Params
        if not params.takes_consumer_parameters:
            return {}
        accepted = params.model_fields
        shared = consumer.params.model_fields_set & set(accepted)
        return consumer.params.model_dump(by_alias=True, include=shared)

    def _warn_ignored_producer_params(self, consumer: PluginSpec, producer: str) -> None:
        spec = self.plugins[producer]
        shared = self._shared_params(consumer, spec.type_name)
        if shared and not spec.implicit:
            self.warnings.append(
                f"plugin {consumer.name!r}: parameters {', '.join(sorted(shared))} are ignored because "
                f"{spec.type_name} {producer!r} is configured; set them there"
            )


def _upgrade(
    cls: type[Plugin], parameters: Mapping[str, Any], written_type: str
) -> tuple[type[Plugin], ParameterUpgrade]:
    """The parameters as `cls` reads them, or, when they stand for another type, as that type does."""
    upgrade = cls.Params.upgrade(parameters, written_type)
    if not upgrade.read_as:
        return cls, upgrade
    target = _known_type(upgrade.read_as)
    again = target.Params.upgrade(upgrade.parameters, target.type_name)
    again.warnings[:0] = upgrade.warnings
    again.problems[:0] = upgrade.problems
    again.implied[:0] = upgrade.implied
    return target, again


# What llm-d router's strconv.ParseBool takes after `name=` (lowered first), and whether it is on.
_GATE_VALUES = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def _gates(written: Iterable[str]) -> dict[str, bool]:
    """Feature gates by name: `name` or `name=true` turns one on, `name=false` off (llm-d router);
    `_feature_gates` has refused any other value."""
    gates: dict[str, bool] = {}
    for gate in written:
        name, assigned, value = gate.partition("=")
        gates[name.strip()] = not assigned or _GATE_VALUES[value.strip().lower()]
    return gates


def _consumes(spec: PluginSpec) -> Mapping[DataKey, str]:
    cls = spec.cls
    return cls.consumed_keys(spec.params) if issubclass(cls, DataConsumer) else {}


def _produces(cls: type[Plugin], key: DataKey) -> bool:
    return issubclass(cls, DataProducer) and cls.produces == key


def _names(plugins: Mapping[str, PluginSpec]) -> str:
    return ", ".join(plugins) or "none"


def _unknown_type(type_name: str) -> str:
    entry = unavailable(type_name)
    if entry is not None:
        return entry.message(type_name)
    known = canonical_type_names()
    closest = closest_field(type_name, known)
    hint = f"did you mean {closest!r}? " if closest else ""
    return f"unknown plugin type {type_name!r}; {hint}known types: {', '.join(known)}"


def _known_type(type_name: str) -> type[Plugin]:
    """A type the loader itself names (a default plugin), so it must exist."""
    cls = find_plugin_type(type_name)
    if cls is None:
        raise LookupError(f"built-in plugin type {type_name!r} is not registered")
    return cls


def _role_text(role: type) -> str:
    texts: dict[type, str] = {
        FairnessPolicy: "fairness policy",
        OrderingPolicy: "ordering policy",
        UsageLimitPolicy: "usage-limit policy",
    }
    return texts.get(role, role.__name__)


def _registered(type_name: str) -> type[Plugin] | None:
    return plugin_types().get(type_name)


def _types_of(role: type) -> list[str]:
    return sorted({cls.type_name for cls in plugin_types().values() if issubclass(cls, role)})
