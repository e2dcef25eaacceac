"""Builders for scheduling tests: endpoints with given metrics, parsed requests, plugin instances."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from epp.datalayer.inflight import InFlightLoad
from epp.datastore import Endpoint, EndpointSpec
from epp.framework import Plugin, PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requests import ApiKind, InferenceRequest

if TYPE_CHECKING:
    from epp.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer

P = TypeVar("P", bound=Plugin)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def endpoint(
    name: str = "e0",
    *,
    address: str = "10.0.0.1",
    port: int = 8000,
    queue: int = 0,
    running: int = 0,
    kv: float = 0.0,
    labels: Mapping[str, str] | None = None,
    namespace: str = "default",
    active: Iterable[str] = (),
    waiting: Iterable[str] = (),
    max_lora: int = 0,
    block_size: int = 0,
    num_blocks: int = 0,
    scraped_at: float | None = None,
    inflight: int = 0,
    inflight_tokens: int = 0,
) -> Endpoint:
    spec = EndpointSpec(
        name=name,
        address=address,
        port=port,
        labels=MappingProxyType(dict(labels or {})),
        namespace=namespace,
    )
    result = Endpoint(spec)
    metrics = result.metrics
    metrics.waiting_queue_size = queue
    metrics.running_requests_size = running
    metrics.kv_cache_usage = kv
    metrics.active_models = frozenset(active)
    metrics.waiting_models = frozenset(waiting)
    metrics.max_active_models = max_lora
    metrics.cache_block_size = block_size
    metrics.cache_num_blocks = num_blocks
    metrics.update_time = time.monotonic() if scraped_at is None else scraped_at
    result.inflight_requests = inflight
    result.inflight_tokens = inflight_tokens
    return result


def producer_counts(candidates: Iterable[Endpoint], load: InFlightLoad | None = None) -> InFlightLoad:
    """An inflight-load-producer's counters holding what `endpoint(inflight=, inflight_tokens=)`
    set on each candidate (the llm-d consumers read the producer's counts, not the director's)."""
    load = load if load is not None else InFlightLoad()
    for e in candidates:
        cell = load.cell(e)
        cell.requests, cell.tokens = e.inflight_requests, e.inflight_tokens
    return load


def endpoints(count: int, **metrics: Any) -> list[Endpoint]:
    return [endpoint(f"e{i}", address=f"10.0.0.{i + 1}", **metrics) for i in range(count)]


def request(
    prompt: bytes | str = b"",
    *,
    model: str = "m",
    headers: dict[str, str] | None = None,
    token_ids: list[int] | None = None,
    cache_salt: str = "",
) -> InferenceRequest:
    return InferenceRequest(
        request_id="r",
        api=ApiKind.COMPLETIONS,
        path="/v1/completions",
        model=model,
        headers=headers or {},
        prompt=prompt.encode() if isinstance(prompt, str) else prompt,
        token_ids=token_ids,
        cache_salt=cache_salt,
    )


def context(
    seed: int = 0, clock: FakeClock | None = None, metrics: EppMetrics | None = None
) -> PluginContext:
    return PluginContext(metrics or EppMetrics(), random.Random(seed), clock or time.monotonic)


def plugin(cls: type[P], params: Mapping[str, Any] | None = None, ctx: PluginContext | None = None) -> P:
    """An instance configured exactly as a config file would (camelCase parameters, validated)."""
    return cls(cls.type_name, cls.Params.model_validate(dict(params or {})), ctx or context())


def pinning_producer(clock: FakeClock) -> PrecisePrefixCacheProducer:
    """A precise-prefix-cache-producer whose speculative entries last as long as their requests
    (`speculativeUntilConfirmed`), 16-token blocks, `speculativeTTL` 500 ms after a request ends;
    its tokens come from a producer named "tok"."""
    from epp.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer

    producer = plugin(
        PrecisePrefixCacheProducer,
        {
            "speculativeIndexing": True,
            "speculativeTTL": "500ms",
            "speculativeUntilConfirmed": True,
            "tokenProcessorConfig": {"blockSize": 16},
        },
        context(clock=clock),
    )
    producer.bind_producer(next(iter(producer.consumes)), "tok")
    return producer
