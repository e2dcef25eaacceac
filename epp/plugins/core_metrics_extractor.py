"""`core-metrics-extractor`: which metric names each inference engine publishes. `engineConfigs`
entries replace a built-in engine of the same name or add a new one; an empty spec string means
the engine does not publish that metric."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator, model_validator

from epp.datalayer import MetricsExtractor
from epp.datalayer.engines import BUILTIN_ENGINES, ENGINE_LABEL, EngineMetrics
from epp.datalayer.promtext import MetricSpec
from epp.framework import Plugin, PluginContext, PluginParams, register

SPEC_FIELDS = (
    "queued_requests_spec",
    "running_requests_spec",
    "kv_usage_spec",
    "lora_spec",
    "cache_info_spec",
    "cache_block_size_spec",
    "cache_num_blocks_spec",
)


class CustomMetricConfig(PluginParams):
    """llm-d router: a scalar metric kept as an endpoint attribute (for endpoint-attribute-*)."""

    attribute_key: str = Field(min_length=1)
    metric_spec: str = Field(min_length=1)

    @field_validator("metric_spec")
    @classmethod
    def _parses(cls, spec: str) -> str:
        MetricSpec.parse(spec)
        return spec


class EngineConfig(PluginParams):
    name: str = Field(min_length=1)
    queued_requests_spec: str = ""
    running_requests_spec: str = ""
    kv_usage_spec: str = ""
    lora_spec: str = ""
    cache_info_spec: str = ""
    cache_block_size_label_name: str = ""
    cache_num_blocks_label_name: str = ""
    cache_block_size_spec: str = ""
    cache_num_blocks_spec: str = ""
    custom_metrics: list[CustomMetricConfig] = []

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == "default":
            raise ValueError("engine name 'default' is reserved")
        return name

    @field_validator(*SPEC_FIELDS)
    @classmethod
    def _parses(cls, spec: str) -> str:
        if spec:
            MetricSpec.parse(spec)
        return spec

    def engine(self) -> EngineMetrics:
        def specs(text: str) -> tuple[MetricSpec, ...]:
            return (MetricSpec.parse(text),) if text else ()

        return EngineMetrics(
            name=self.name,
            waiting=specs(self.queued_requests_spec),
            running=specs(self.running_requests_spec),
            kv_usage=specs(self.kv_usage_spec),
            lora=specs(self.lora_spec),
            cache_info=specs(self.cache_info_spec),
            cache_block_size_label=self.cache_block_size_label_name,
            cache_num_blocks_label=self.cache_num_blocks_label_name,
            cache_block_size=specs(self.cache_block_size_spec),
            cache_num_blocks=specs(self.cache_num_blocks_spec),
            custom=tuple((c.attribute_key, MetricSpec.parse(c.metric_spec)) for c in self.custom_metrics),
        )


class CoreMetricsExtractorParams(PluginParams):
    engine_label_key: str = ENGINE_LABEL
    default_engine: str = "vllm"
    engine_configs: list[EngineConfig] = []

    @model_validator(mode="after")
    def _default_engine_known(self) -> CoreMetricsExtractorParams:
        known = set(BUILTIN_ENGINES) | {c.name for c in self.engine_configs}
        if self.default_engine not in known:
            raise ValueError(f"defaultEngine {self.default_engine!r} is not one of {sorted(known)}")
        return self


@register
class CoreMetricsExtractor(Plugin, MetricsExtractor):
    type_name = "core-metrics-extractor"
    aliases = ("model-server-protocol-metrics",)  # GIE v1.3
    Params = CoreMetricsExtractorParams

    def __init__(self, name: str, params: CoreMetricsExtractorParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self._engines = {**BUILTIN_ENGINES, **{c.name: c.engine() for c in params.engine_configs}}
        self._default_engine = params.default_engine
        self._engine_label_key = params.engine_label_key

    def engines(self) -> Mapping[str, EngineMetrics]:
        return self._engines

    def default_engine(self) -> str:
        return self._default_engine

    def engine_label_key(self) -> str:
        return self._engine_label_key
