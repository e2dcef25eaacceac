"""vLLM-named Prometheus metrics read from engine state at scrape time (never stale).

One ``CollectorRegistry`` per simulated endpoint, holding one custom collector; nothing is updated
on the request path, so scrapes cost one pass over a handful of counters and four histograms.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from epp.sim.engine import Engine
from epp.sim.histogram import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineCollector(Collector):
    """Exports the gauges, counters and histograms an EPP scrapes from vLLM."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self._engine = engine
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        engine, labels = self._engine, [self._model]
        stats = engine.stats
        yield _gauge(
            "vllm:num_requests_running", "Requests in the running batch.", engine.num_running, labels
        )
        yield _gauge(
            "vllm:num_requests_waiting", "Requests waiting to be scheduled.", engine.num_waiting, labels
        )
        usage = engine.kv_usage()
        yield _gauge("vllm:kv_cache_usage_perc", "KV-cache usage (1 = 100 %).", usage, labels)
        yield _gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (older vLLM name).", usage, labels)

        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running and waiting LoRA adapters; the value is the time of the report.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        lora.add_metric(
            [
                str(engine.profile.max_loras),
                ",".join(engine.running_loras()),
                ",".join(engine.waiting_loras()),
            ],
            time.time(),
        )
        yield lora
        cache = GaugeMetricFamily(
            "vllm:cache_config_info", "KV-cache configuration.", labels=["block_size", "num_gpu_blocks"]
        )
        cache.add_metric([str(engine.block_size), str(engine.profile.num_gpu_blocks)], 1.0)
        yield cache

        yield _counter("vllm:prompt_tokens", "Prefilled prompt tokens.", stats.prompt_tokens, labels)
        yield _counter("vllm:generation_tokens", "Generated tokens.", stats.generation_tokens, labels)
        yield _counter("vllm:prefix_cache_queries", "Prompt tokens looked up.", stats.prefix_queries, labels)
        yield _counter("vllm:prefix_cache_hits", "Prompt tokens found cached.", stats.prefix_hits, labels)
        yield _counter("vllm:num_preemptions", "Preempted requests.", stats.preemptions, labels)
        yield _counter(
            "vllm:sim_prefill_only_requests", "Prefill legs served (P/D).", stats.prefill_only, labels
        )
        yield _counter(
            "vllm:sim_remote_decode_requests", "Decode legs served (P/D).", stats.remote_decode, labels
        )
        success = CounterMetricFamily(
            "vllm:request_success", "Finished requests by reason.", labels=["model_name", "finished_reason"]
        )
        for reason, count in sorted(stats.finished.items()):
            success.add_metric([self._model, reason], count)
        yield success

        yield _histogram("vllm:time_to_first_token_seconds", "Time to first token.", stats.ttft, labels)
        yield _histogram("vllm:inter_token_latency_seconds", "Time between tokens.", stats.itl, labels)
        yield _histogram(
            "vllm:time_per_output_token_seconds", "Time per output token (older name).", stats.itl, labels
        )
        yield _histogram("vllm:e2e_request_latency_seconds", "Request latency.", stats.e2e, labels)
        yield _histogram("vllm:request_queue_time_seconds", "Time spent waiting.", stats.queue_time, labels)


def _gauge(name: str, doc: str, value: float, labels: list[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["model_name"])
    family.add_metric(labels, value)
    return family


def _counter(name: str, doc: str, value: float, labels: list[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["model_name"])
    family.add_metric(labels, value)
    return family


def _histogram(name: str, doc: str, histogram: Histogram, labels: list[str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["model_name"])
    buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    family.add_metric(labels, buckets, sum_value=histogram.total)
    return family


def build_registry(engine: Engine, model_name: str) -> CollectorRegistry:
    """A registry of its own for one simulated endpoint."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, model_name))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
