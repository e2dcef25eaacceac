"""The EndpointPickerConfig document as written (GIE v1.2 through v1.5+ and llm-d), decoded
strictly. Meaning (references, defaults, plugin parameters) is checked by the loader."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from epp.params.strict import StrictModel
from epp.params.values import Duration, Quantity

Name = Field(min_length=1)


class PluginDoc(StrictModel):
    name: str | None = Field(default=None, min_length=1)
    type: str = Name
    parameters: dict[str, Any] | None = None


class ProfilePluginDoc(StrictModel):
    plugin_ref: str = Name
    weight: float | None = None

    @field_validator("weight")
    @classmethod
    def _finite(cls, weight: float | None) -> float | None:
        if weight is not None and not math.isfinite(weight):
            raise ValueError("weight must be a finite number")
        return weight


class ProfileDoc(StrictModel):
    name: str = Name
    plugins: list[ProfilePluginDoc] = []


class SaturationDetectorDoc(StrictModel):
    """v1.5+: `{pluginRef}`. v1.2-v1.4: the utilization thresholds inline."""

    plugin_ref: str | None = Field(default=None, min_length=1)
    queue_depth_threshold: int | None = Field(default=None, gt=0)
    kv_cache_util_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    metrics_staleness_threshold: Duration | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> SaturationDetectorDoc:
        if self.plugin_ref is not None and self.inline_thresholds():
            raise ValueError("give either pluginRef (v1.5+) or the thresholds (v1.2-v1.4), not both")
        return self

    def inline_thresholds(self) -> dict[str, Any]:
        """The v1.2-v1.4 thresholds that were set, keyed as utilization-detector parameters."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"plugin_ref"})


class PluginRefDoc(StrictModel):
    plugin_ref: str = Name


class DataSourceDoc(StrictModel):
    plugin_ref: str = Name
    extractors: list[PluginRefDoc] = []


class DataLayerDoc(StrictModel):
    sources: list[DataSourceDoc] = []
    # llm-d router: default injection, and where endpoints come from (file-discovery) instead of
    # Kubernetes or the command line.
    inject_defaults: bool | None = None
    discovery: PluginRefDoc | None = None
    # llm-d router (main): peer EPP discovery and cross-replica state sync, for which it registers
    # no plugin type yet (the loader says so); the interval means nothing without a syncer.
    peer_discovery: PluginRefDoc | None = None
    cross_replica_syncer_plugin_ref: str | None = None
    cross_replica_sync_interval: Duration | None = None


class RequestHandlerDoc(StrictModel):
    """llm-d router: `requestHandler.parsers` replaces the top-level `parser`."""

    parsers: list[PluginRefDoc] = []


class BandLimitsDoc(StrictModel):
    max_bytes: Quantity | None = None
    max_requests: Quantity | None = None
    fairness_policy_ref: str | None = None
    ordering_policy_ref: str | None = None


class PriorityBandDoc(BandLimitsDoc):
    priority: int


MAX_REQUEST_TTL = 24 * 3600.0


class FlowControlDoc(StrictModel):
    max_bytes: Quantity | None = None
    max_requests: Quantity | None = None
    default_request_ttl: Duration | None = Field(default=None, alias="defaultRequestTTL")
    no_endpoint_request_ttl: Duration | None = Field(default=None, alias="noEndpointRequestTTL")
    default_priority_band: BandLimitsDoc | None = None
    default_negative_priority_band: BandLimitsDoc | None = None
    priority_bands: list[PriorityBandDoc] = []
    usage_limit_policy_plugin_ref: str | None = None
    # llm-d router: the saturation detector that gates dispatch moved here (the top-level key
    # still loads).
    saturation_detector: SaturationDetectorDoc | None = None
    enable_eviction: bool | None = None

    @field_validator("default_request_ttl")
    @classmethod
    def _sane_ttl(cls, ttl: float | None) -> float | None:
        if ttl is not None and not ttl <= MAX_REQUEST_TTL:
            raise ValueError(
                f"{ttl:g}s is more than 24h; a request waiting that long in the EPP's queue has lost its "
                "client (0 or omitted: the client's deadline)"
            )
        return ttl

    @model_validator(mode="after")
    def _distinct_bands(self) -> FlowControlDoc:
        seen = [band.priority for band in self.priority_bands]
        duplicates = sorted({p for p in seen if seen.count(p) > 1})
        if duplicates:
            raise ValueError(f"priorityBands: priority {duplicates[0]} is configured more than once")
        return self

    def plugin_refs(self) -> list[tuple[str, str]]:
        """(field path, referenced plugin name) for every policy reference."""
        refs = []
        if self.usage_limit_policy_plugin_ref:
            refs.append(("flowControl.usageLimitPolicyPluginRef", self.usage_limit_policy_plugin_ref))
        bands: list[tuple[str, BandLimitsDoc]] = [
            (f"flowControl.priorityBands[{i}]", b) for i, b in enumerate(self.priority_bands)
        ]
        if self.default_priority_band is not None:
            bands.append(("flowControl.defaultPriorityBand", self.default_priority_band))
        if self.default_negative_priority_band is not None:
            bands.append(("flowControl.defaultNegativePriorityBand", self.default_negative_priority_band))
        for path, band in bands:
            if band.fairness_policy_ref:
                refs.append((f"{path}.fairnessPolicyRef", band.fairness_policy_ref))
            if band.ordering_policy_ref:
                refs.append((f"{path}.orderingPolicyRef", band.ordering_policy_ref))
        return refs


class EndpointPickerConfigDoc(StrictModel):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"]
    kind: Literal["EndpointPickerConfig"]
    feature_gates: list[str] = []  # names checked by the loader; llm-d router allows `name=false`
    plugins: list[PluginDoc] = []
    scheduling_profiles: list[ProfileDoc] = []
    saturation_detector: SaturationDetectorDoc | None = None
    data_layer: DataLayerDoc | None = None
    data: DataLayerDoc | None = Field(default=None, description="GIE v1.3-v1.4 name of dataLayer")
    parser: PluginRefDoc | None = None
    request_handler: RequestHandlerDoc | None = None
    flow_control: FlowControlDoc | None = None

    @model_validator(mode="after")
    def _one_data_layer_key(self) -> EndpointPickerConfigDoc:
        if self.data_layer is not None and self.data is not None:
            raise ValueError("give dataLayer (v1.5+) or data (v1.3-v1.4), not both")
        return self
