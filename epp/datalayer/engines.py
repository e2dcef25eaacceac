"""Where each inference engine publishes the numbers the EPP schedules on (GIE's engine table)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from epp.datalayer.promtext import MetricSpec, Sample, SeriesByName
from epp.datastore import EndpointMetrics

ENGINE_LABEL = "inference.networking.k8s.io/engine-type"


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """Metric selectors for one engine. An empty tuple means the engine does not publish it; where
    several selectors are given the first one present wins (vLLM renamed its KV-cache gauge)."""

    name: str
    waiting: tuple[MetricSpec, ...]
    running: tuple[MetricSpec, ...]
    kv_usage: tuple[MetricSpec, ...]
    lora: tuple[MetricSpec, ...] = ()
    cache_info: tuple[MetricSpec, ...] = ()
    cache_block_size_label: str = ""
    cache_num_blocks_label: str = ""
    cache_block_size: tuple[MetricSpec, ...] = ()
    cache_num_blocks: tuple[MetricSpec, ...] = ()
    # llm-d's customMetrics: (endpoint attribute key, selector) scalars kept as they are.
    custom: tuple[tuple[str, MetricSpec], ...] = ()

    def names(self) -> set[str]:
        specs = (
            self.waiting
            + self.running
            + self.kv_usage
            + self.lora
            + self.cache_info
            + self.cache_block_size
            + self.cache_num_blocks
        )
        return {s.name for s in specs} | {spec.name for _, spec in self.custom}

    def absent(self, samples: SeriesByName) -> list[str]:
        """What the engine schedules on that a page does not publish, each described with its
        selectors: it reads as 0 for as long as it is absent, as GIE reads it (a metric flag
        naming a series the server never writes, or a server of another engine)."""
        core = (
            ("waiting queue", self.waiting),
            ("running requests", self.running),
            ("KV-cache use", self.kv_usage),
        )
        return [
            f"{what} ({describe(specs)})" for what, specs in core if specs and not _matching(samples, specs)
        ]

    def read(self, samples: SeriesByName, now: float) -> EndpointMetrics:
        metrics = EndpointMetrics(update_time=now)
        metrics.waiting_queue_size = int(_total(samples, self.waiting))
        metrics.running_requests_size = int(_total(samples, self.running))
        metrics.kv_cache_usage = _highest(samples, self.kv_usage)
        lora = _latest(samples, self.lora)
        if lora is not None:
            metrics.active_models = _adapters(lora.labels.get("running_lora_adapters", ""))
            metrics.waiting_models = _adapters(lora.labels.get("waiting_lora_adapters", ""))
            metrics.max_active_models = _int(lora.labels.get("max_lora", "0"))
        info = _first(samples, self.cache_info)
        if info is not None:
            metrics.cache_block_size = _int(info.labels.get(self.cache_block_size_label, "0"))
            metrics.cache_num_blocks = _int(info.labels.get(self.cache_num_blocks_label, "0"))
        if self.cache_block_size:
            metrics.cache_block_size = int(_highest(samples, self.cache_block_size))
        if self.cache_num_blocks:
            metrics.cache_num_blocks = int(_highest(samples, self.cache_num_blocks))
        for key, spec in self.custom:
            sample = _first(samples, (spec,))
            if sample is not None and math.isfinite(sample.value):
                metrics.scalars[key] = sample.value
        return metrics


def describe(specs: tuple[MetricSpec, ...]) -> str:
    if not specs:
        return "nothing"
    return " or ".join(
        spec.name + ("{" + ",".join(f"{k}={v}" for k, v in spec.labels) + "}" if spec.labels else "")
        for spec in specs
    )


def _matching(samples: SeriesByName, specs: tuple[MetricSpec, ...]) -> Sequence[Sample]:
    for spec in specs:
        series = samples.get(spec.name)
        if series and spec.labels:
            series = [s for s in series if spec.matches(s.labels)]
        if series:
            return series
    return ()


def _first(samples: SeriesByName, specs: tuple[MetricSpec, ...]) -> Sample | None:
    series = _matching(samples, specs)
    return series[0] if series else None


def _finite(value: float, series: Sequence[Sample]) -> float:
    if value - value != 0.0:  # NaN or infinite: math.isfinite without a call
        raise ValueError(f"non-finite metric value in {[s.value for s in series]}")
    return value


def _total(samples: SeriesByName, specs: tuple[MetricSpec, ...]) -> float:
    """Counts add up over series: one per model normally; a multi-model server reports several."""
    series = _matching(samples, specs)
    total = 0.0
    for sample in series:
        total += _finite(sample.value, series)
    return total


def _highest(samples: SeriesByName, specs: tuple[MetricSpec, ...]) -> float:
    """Ratios and sizes do not add up: with several series (data-parallel ranks) the fullest one
    speaks for the endpoint."""
    series = _matching(samples, specs)
    if not series:
        return 0.0
    highest = _finite(series[0].value, series)
    for sample in series[1:]:
        highest = max(highest, _finite(sample.value, series))
    return highest


def _latest(samples: SeriesByName, specs: tuple[MetricSpec, ...]) -> Sample | None:
    """vLLM's LoRA info gauge carries a timestamp as its value: the newest series is current."""
    series = _matching(samples, specs)
    if len(series) < 2:
        return series[0] if series else None
    return max(series, key=lambda s: s.value)


@functools.lru_cache(maxsize=1024)  # label values repeat scrape after scrape
def _adapters(text: str) -> frozenset[str]:
    return frozenset(a.strip() for a in text.split(",") if a.strip())


@functools.lru_cache(maxsize=1024)
def _int(text: str) -> int:
    """A label's number; 0 (unknown) for one that is not a finite number."""
    try:
        return int(float(text))
    except (ValueError, OverflowError):  # "nan" / garbage; "inf"
        return 0


def _specs(*texts: str) -> tuple[MetricSpec, ...]:
    return tuple(MetricSpec.parse(t) for t in texts if t)


BUILTIN_ENGINES: dict[str, EngineMetrics] = {
    "vllm": EngineMetrics(
        name="vllm",
        waiting=_specs("vllm:num_requests_waiting"),
        running=_specs("vllm:num_requests_running"),
        kv_usage=_specs("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        lora=_specs("vllm:lora_requests_info"),
        cache_info=_specs("vllm:cache_config_info"),
        cache_block_size_label="block_size",
        cache_num_blocks_label="num_gpu_blocks",
    ),
    "sglang": EngineMetrics(
        name="sglang",
        waiting=_specs("sglang:num_queue_reqs"),
        running=_specs("sglang:num_running_reqs"),
        kv_usage=_specs("sglang:token_usage"),
        cache_info=_specs("sglang:cache_config_info"),
        cache_block_size_label="page_size",
        cache_num_blocks_label="num_pages",
    ),
    "trtllm-serve": EngineMetrics(
        name="trtllm-serve",
        waiting=_specs("trtllm_num_requests_waiting"),
        running=_specs("trtllm_num_requests_running"),
        kv_usage=_specs("trtllm_kv_cache_utilization"),
        cache_block_size=_specs("trtllm_kv_cache_tokens_per_block"),
        cache_num_blocks=_specs("trtllm_kv_cache_max_blocks"),
    ),
    "triton-tensorrt-llm": EngineMetrics(
        name="triton-tensorrt-llm",
        waiting=_specs("nv_trt_llm_request_metrics{request_type=waiting}"),
        running=_specs("nv_trt_llm_request_metrics{request_type=scheduled}"),
        kv_usage=_specs("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}"),
        cache_block_size=_specs("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}"),
        cache_num_blocks=_specs("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}"),
    ),
}
