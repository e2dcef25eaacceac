"""GIE's command-line data-layer settings, applied over what the config's data-layer plugins
(`metrics-data-source`, `core-metrics-extractor`) give the scraper.

GIE's charts render both: a config whose `metrics-data-source` spells out the defaults (`path:
"/metrics"`) and flags that carry the per-engine values (the trtllm-serve chart adds
`--model-server-metrics-path="/prometheus/metrics"`). The flags are the specific intent, so here a
flag given wins over the config; GIE v1.5 lets the config win for the data-source flags and refuses
to start on the metric-name flags (v1.3 honoured them), which would leave those charts scraping the
wrong page or not starting at all."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.datalayer.engines import EngineMetrics, describe
from epp.datalayer.promtext import MetricSpec
from epp.datalayer.scraper import ScrapeSettings

log = logging.getLogger(__name__)

# EngineMetrics field -> the GIE flag that names its metric.
METRIC_FLAGS: dict[str, str] = {
    "waiting": "--total-queued-requests-metric",
    "running": "--total-running-requests-metric",
    "kv_usage": "--kv-cache-usage-percentage-metric",
    "lora": "--lora-info-metric",
    "cache_info": "--cache-info-metric",
}
# GIE reads a flag-given cache-info metric's labels under vLLM's names.
FLAG_CACHE_LABELS = ("block_size", "num_gpu_blocks")


@dataclass(frozen=True)
class ScrapeOverrides:
    """None (or absent from `metric_specs`): the flag was not given. An empty spec: the engine
    does not publish that metric (the Triton chart's `--lora-info-metric ""`)."""

    scheme: str | None = None
    path: str | None = None
    insecure_skip_verify: bool | None = None
    metric_specs: Mapping[str, str] = field(default_factory=dict)  # EngineMetrics field -> spec

    def __post_init__(self) -> None:
        unknown = set(self.metric_specs) - set(METRIC_FLAGS)
        if unknown:
            raise ValueError(f"not engine metric fields: {sorted(unknown)}")
        for spec in self.metric_specs.values():
            if spec:
                MetricSpec.parse(spec)

    def apply(self, settings: ScrapeSettings) -> ScrapeSettings:
        """`settings` with every given flag in force (each change logged)."""
        changes: dict[str, Any] = {}
        for name in ("scheme", "path", "insecure_skip_verify"):
            value = getattr(self, name)
            if value is not None and value != getattr(settings, name):
                log.info(
                    "--model-server-metrics-%s %r replaces %r",
                    _flag_suffix(name),
                    value,
                    getattr(settings, name),
                )
                changes[name] = value
        if self.metric_specs:
            engine = settings.engines[settings.default_engine]
            changes["engines"] = {**settings.engines, engine.name: self._engine(engine)}
        return dataclasses.replace(settings, **changes) if changes else settings

    def _engine(self, engine: EngineMetrics) -> EngineMetrics:
        """The default engine with the flags' metric names in place of its own."""
        changes: dict[str, Any] = {}
        for name, spec in self.metric_specs.items():
            specs = (MetricSpec.parse(spec),) if spec else ()
            if specs != getattr(engine, name):
                log.info(
                    "%s %r: the default engine %s reads %s instead of %s",
                    METRIC_FLAGS[name],
                    spec,
                    engine.name,
                    describe(specs),
                    describe(getattr(engine, name)),
                )
            changes[name] = specs
        if "cache_info" in self.metric_specs:
            # The cache geometry then comes from that metric's labels alone (trtllm-serve's and
            # Triton's separate gauges would otherwise overwrite it).
            changes["cache_block_size"] = changes["cache_num_blocks"] = ()
            if not engine.cache_block_size_label:
                changes["cache_block_size_label"], changes["cache_num_blocks_label"] = FLAG_CACHE_LABELS
        return dataclasses.replace(engine, **changes)


def _flag_suffix(name: str) -> str:
    return "https-insecure-skip-verify" if name == "insecure_skip_verify" else name
