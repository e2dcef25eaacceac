"""llm-d router's prefix-indexer metrics (`llm_d_epp_prefix_indexer_*`), by the plugin that keeps
the index: llm-d-router ebab687 labels them `plugin_name`, `plugin_type`, which GIE's unlabelled
`inference_extension_prefix_indexer_*` samples cannot be renamed into when /metrics is read (two
indexes add up in them). With `--metrics-aliases llm-d` each lookup is recorded here as well."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram

from epp.metrics.buckets import HIT_BYTES_BUCKETS, HIT_RATIO_BUCKETS
from epp.metrics.families import Families

LABELS = ("plugin_name", "plugin_type")

# Records one lookup: (matched blocks / prompt blocks, matched bytes).
HitRecorder = Callable[[float, float], None]


class PrefixIndexerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry, alpha=False)
        self.size = f.gauge("llm_d_epp_prefix_indexer_size", "Size of the prefix indexer.", LABELS)
        self.hit_ratio: Histogram = f.histogram(
            "llm_d_epp_prefix_indexer_hit_ratio",
            "Ratio of the prefix matched to the prompt's length in a cache lookup.",
            LABELS,
            HIT_RATIO_BUCKETS,
        )
        self.hit_bytes: Histogram = f.histogram(
            "llm_d_epp_prefix_indexer_hit_bytes",
            "Length of the prefix matched in a cache lookup, in bytes.",
            LABELS,
            HIT_BYTES_BUCKETS,
        )

    def index(self, plugin_name: str, plugin_type: str, size: Callable[[], float]) -> HitRecorder:
        """A plugin's index: its size read when /metrics is read, and the recorder of its lookups
        (the children made once)."""
        self.size.labels(plugin_name, plugin_type).set_function(size)
        ratio = self.hit_ratio.labels(plugin_name, plugin_type).observe
        matched = self.hit_bytes.labels(plugin_name, plugin_type).observe

        def hit(hit_ratio: float, hit_bytes: float) -> None:
            ratio(hit_ratio)
            matched(hit_bytes)

        return hit
