"""What the decision benchmarks (scheduler_bench.py, candidates_bench.py) share: a pool of ready
vLLM-like endpoints, the director a config builds over it, and a crude server model feeding each
pick back into the metrics so requests spread as in production."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

from epp.config.build import EndpointPickerComponents, build_director
from epp.config.loader import load_config, load_config_file
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requestcontrol import Director

ENGINE_BLOCK_TOKENS = 16  # vLLM's default block size, picked up by autoTune


def make_pool(
    count: int,
    model: str,
    rng: random.Random,
    cache_blocks: int,
    name: Callable[[int], str],
    address: Callable[[int], str],
    running: bool = False,
) -> Datastore:
    """`count` ready endpoints serving `model`, with random queues and KV-cache use (and running
    requests when `running`), each with `cache_blocks` KV blocks of ENGINE_BLOCK_TOKENS tokens."""
    datastore = Datastore()
    for i in range(count):
        spec = EndpointSpec(
            name=name(i),
            address=address(i),
            port=8000,
            labels=MappingProxyType({}),
            models=frozenset({model}),
        )
        metrics = datastore.upsert(spec).metrics
        metrics.waiting_queue_size = rng.randrange(0, 4)
        if running:
            metrics.running_requests_size = rng.randrange(0, 64)
        metrics.kv_cache_usage = rng.uniform(0.0, 0.5)
        metrics.cache_block_size = ENGINE_BLOCK_TOKENS
        metrics.cache_num_blocks = cache_blocks
        metrics.update_time = time.monotonic()
    datastore.synced = True
    return datastore


def build(
    datastore: Datastore, seed: int, config: Path | None = None, metrics: EppMetrics | None = None
) -> tuple[Director, EndpointPickerComponents]:
    """The director for `config` (GIE's default when None) over `datastore`."""
    picker = load_config_file(config) if config else load_config()
    return build_director(picker, datastore, PluginContext(metrics or EppMetrics(), random.Random(seed)))


def serve(endpoints: Sequence[Endpoint], chosen: Endpoint, decisions: int, stamp: bool = True) -> None:
    """The chosen endpoint's queue and cache use grow, and every endpoint drains a little each 32
    decisions (a scrape, which stamps the metrics' update time when `stamp`)."""
    chosen.metrics.waiting_queue_size += 1
    chosen.metrics.kv_cache_usage = min(0.95, chosen.metrics.kv_cache_usage + 0.01)
    if decisions % 32 == 0:
        for endpoint in endpoints:
            endpoint.metrics.waiting_queue_size //= 2
            endpoint.metrics.kv_cache_usage *= 0.9
            if stamp:
                endpoint.metrics.update_time = time.monotonic()
