"""Where each inference engine publishes the numbers the EPP schedules on (GIE's engine table)."""

from __future__ import annotations

import functools
import math
import re
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
        return self.read_page(samples, now)[0]

    def read_page(self, samples: SeriesByName, now: float) -> tuple[EndpointMetrics, bool]:
        """The endpoint's metrics from a page, and whether llm-d's core-metrics-extractor fails on
        it (its datalayer extract error, llm-d-router ebab687), found in the same reading: a
        metric the engine maps is absent (the waiting queue, running requests, KV-cache use, the
        cache info or block gauges, a custom metric; not the LoRA info), or an integer label of
        the LoRA or cache info is not an integer. Ours reads what it can all the same (an absent
        count as 0, such a label as 0). Raises ValueError for a value that is not finite."""
        metrics = EndpointMetrics(update_time=now)
        waiting = _matching(samples, self.waiting)
        running = _matching(samples, self.running)
        kv_usage = _matching(samples, self.kv_usage)
        # a metric the engine maps (selectors set) that the page lacks
        fails = (
            (not waiting and bool(self.waiting))
            or (not running and bool(self.running))
            or (not kv_usage and bool(self.kv_usage))
        )
        metrics.waiting_queue_size = int(_total(waiting))
        metrics.running_requests_size = int(_total(running))
        metrics.kv_cache_usage = _highest(kv_usage)
        lora = _latest(_matching(samples, self.lora))
        if lora is not None:
            metrics.active_models = _adapters(lora.labels.get("running_lora_adapters", ""))
            metrics.waiting_models = _adapters(lora.labels.get("waiting_lora_adapters", ""))
            max_lora = lora.labels.get("max_lora", "")
            metrics.max_active_models = _int(max_lora or "0")
            fails = fails or not _integer(max_lora)
        infos = _matching(samples, self.cache_info)
        if infos:
            block_size = infos[0].labels.get(self.cache_block_size_label, "")
            num_blocks = infos[0].labels.get(self.cache_num_blocks_label, "")
            metrics.cache_block_size = _int(block_size or "0")
            metrics.cache_num_blocks = _int(num_blocks or "0")
            fails = fails or not (_integer(block_size) and _integer(num_blocks))
        else:
            fails = fails or bool(self.cache_info)
        if self.cache_block_size:
            series = _matching(samples, self.cache_block_size)
            metrics.cache_block_size = int(_highest(series))
            fails = fails or not series
        if self.cache_num_blocks:
            series = _matching(samples, self.cache_num_blocks)
            metrics.cache_num_blocks = int(_highest(series))
            fails = fails or not series
        for key, spec in self.custom:
            series = _matching(samples, (spec,))
            if not series:
                fails = True
            elif math.isfinite(series[0].value):
                metrics.scalars[key] = series[0].value
        return metrics, fails


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


def _not_finite(series: Sequence[Sample]) -> ValueError:
    return ValueError(f"non-finite metric value in {[s.value for s in series]}")


# The finite check below is inline, `value - value != 0.0` (NaN or infinite): math.isfinite or a
# helper would be a call per sample, every scrape.


def _total(series: Sequence[Sample]) -> float:
    """Counts add up over series: one per model normally; a multi-model server reports several."""
    total = 0.0
    for _, value in series:
        if value - value != 0.0:
            raise _not_finite(series)
        total += value
    return total


def _highest(series: Sequence[Sample]) -> float:
    """Ratios and sizes do not add up: with several series (data-parallel ranks) the fullest one
    speaks for the endpoint."""
    highest = -math.inf if series else 0.0
    for _, value in series:
        if value - value != 0.0:
            raise _not_finite(series)
        if value > highest:
            highest = value
    return highest


def _latest(series: Sequence[Sample]) -> Sample | None:
    """vLLM's LoRA info gauge carries a timestamp as its value: the newest series is current."""
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


_INTEGER = re.compile(r"[+-]?[0-9]+")


@functools.lru_cache(maxsize=1024)  # label values repeat scrape after scrape
def _integer(text: str) -> bool:
    """An empty label (not set) or one Go's strconv.Atoi reads, as llm-d's extractor parses it."""
    return not text or _INTEGER.fullmatch(text) is not None


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
