"""The virtual-time engine: the simulator's engine and the EPP's director, stepped in model time."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from epp.bench.summary import summarize
from epp.bench.virtual import VirtualCluster, VirtualRun, run_virtual, scraped_metrics
from epp.bench.workload import BenchRequest, WorkloadSpec, generate
from epp.config.loader import load_config, load_config_file
from epp.datalayer.engines import BUILTIN_ENGINES
from epp.datalayer.promtext import Extractor
from epp.framework import Plugin, PluginContext, register
from epp.requestcontrol import PreRequest, ResponseComplete, ResponseReceived, ResponseStreaming
from epp.requests import InferenceRequest, Usage
from epp.scheduling.types import SchedulingResult
from epp.sim.engine import Engine, Request
from epp.sim.metrics import build_registry, render
from epp.sim.profiles import TINY_TEST

TINY = VirtualCluster(endpoints=1, profile=TINY_TEST)
TINY_2 = VirtualCluster(endpoints=2, profile=TINY_TEST)
CONFIGS = Path(__file__).parents[3] / "bench" / "configs"


def workload(groups: int = 2, per_group: int = 3, rate: float = 50.0) -> list[BenchRequest]:
    spec = WorkloadSpec.model_validate(
        {
            "name": "tiny",
            "seed": 5,
            "data": {
                "type": "shared_prefix",
                "num_groups": groups,
                "num_prompts_per_group": per_group,
                "system_prompt_len": 48,
                "question_len": 9,
                "output_len": 6,
            },
            "load": {"rates": [rate]},
        }
    )
    return generate(spec, rate)


LEAST_REQUEST = load_config_file(CONFIGS / "least-request.yaml")
RECORDER = "bench-test-recorder"


@register
class Recorder(Plugin, PreRequest, ResponseReceived, ResponseComplete):
    """Counts the hooks the director calls and keeps the usage each response reported."""

    type_name = RECORDER
    last: Recorder | None = None

    def __init__(self, name: str, params: object, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.calls = {"pre": 0, "received": 0, "complete": 0}
        self.usages: list[Usage | None] = []
        Recorder.last = self

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        self.calls["pre"] += 1

    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None:
        self.calls["received"] += 1

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        self.calls["complete"] += 1
        self.usages.append(usage)


CHUNKS = "bench-test-chunks"


@register
class ChunkClock(Plugin, ResponseStreaming):
    """When (model time) each request's response chunks before the last reached the EPP."""

    type_name = CHUNKS
    last: ChunkClock | None = None

    def __init__(self, name: str, params: object, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.clock = context.clock
        self.seen: dict[str, list[float]] = {}
        ChunkClock.last = self

    def response_streaming(self, request: InferenceRequest, result: SchedulingResult, chunk: bytes) -> None:
        self.seen.setdefault(request.request_id, []).append(self.clock())


def test_the_first_response_chunk_reaches_the_epp_at_the_first_token() -> None:
    config = load_config(
        f"""
        apiVersion: inference.networking.x-k8s.io/v1alpha1
        kind: EndpointPickerConfig
        plugins: [{{type: {CHUNKS}}}, {{type: random-picker}}]
        schedulingProfiles: [{{name: default, plugins: [{{pluginRef: random-picker}}]}}]
        """
    )
    result = VirtualRun(workload(), config, TINY_2).run()
    clock = ChunkClock.last
    assert clock is not None
    assert clock.seen == {str(r.index): [r.first_token] for r in result.records}
    assert all(r.first_token < r.done for r in result.records)


def test_lone_request_takes_exactly_the_engine_model_time() -> None:
    request = workload(1, 1)[0]
    result = run_virtual([request], LEAST_REQUEST, TINY)
    record = result.records[0]
    prefill = TINY_TEST.step_seconds(0, 0, 57, 57 * 57 // 2)
    decode = TINY_TEST.step_seconds(1, 57 + 1, 0, 0)
    assert record.ok and record.prompt_tokens == 57 and record.output_tokens == 6
    assert record.ttft == pytest.approx(prefill)
    assert list(result.itl) == pytest.approx([decode] * 5)
    assert record.e2e == pytest.approx(prefill + 5 * decode)


def test_every_request_goes_through_the_director_hooks_once_and_reports_cached_tokens() -> None:
    config = load_config(
        f"""
        apiVersion: inference.networking.x-k8s.io/v1alpha1
        kind: EndpointPickerConfig
        plugins: [{{type: {RECORDER}}}, {{type: random-picker}}]
        schedulingProfiles: [{{name: default, plugins: [{{pluginRef: random-picker}}]}}]
        """
    )
    run = VirtualRun(workload(), config, VirtualCluster(endpoints=2, profile=TINY_TEST))
    result = run.run()
    recorder = Recorder.last
    assert recorder is not None
    assert recorder.calls == {"pre": 6, "received": 6, "complete": 6}
    assert all(e.inflight_requests == 0 and e.inflight_tokens == 0 for e in run.endpoints)
    assert all(r.ok and r.endpoint in ("sim-0", "sim-1") for r in result.records)
    usages = [u for u in recorder.usages if u is not None]
    assert len(usages) == 6 and sum(u.cached_tokens for u in usages) > 0
    assert sum(u.cached_tokens for u in usages) == sum(r.cached_tokens for r in result.records)
    summary = summarize(result)
    assert 0 < summary.hit_rate < 1


def test_ours_releases_every_speculative_entry_its_requests_pinned() -> None:
    """`ours` ties speculative entries to their requests: once every request has ended, none is
    pinned and the ones left expire `speculativeTTL` after the last request's end."""
    from epp.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer

    run = VirtualRun(workload(4, 6, rate=400.0), load_config_file(CONFIGS / "ours.yaml"), TINY_2)
    result = run.run()
    assert all(r.ok for r in result.records)
    (producer,) = (p for p in run.plugins if isinstance(p, PrecisePrefixCacheProducer))
    index = producer.cache.index
    assert not index._pins
    index.expire(max(r.done for r in result.records) + 2.0)
    assert not index._speculative


def test_runs_are_deterministic() -> None:
    requests = workload(3, 4, rate=200.0)
    config = load_config()  # GIE's default: prefix, queue and KV-cache scorers, random tie-breaks
    first = run_virtual(requests, config, VirtualCluster(3, TINY_TEST, seed=1))
    second = run_virtual(requests, config, VirtualCluster(3, TINY_TEST, seed=1))
    assert first.records == second.records
    assert list(first.itl) == list(second.itl)


def test_follow_up_turns_wait_for_the_previous_answer_plus_think_time() -> None:
    spec = WorkloadSpec.model_validate(
        {
            "name": "chat",
            "api": "chat",
            "data": {
                "type": "multi_turn",
                "conversations": 1,
                "turns": 3,
                "system_prompt_len": 30,
                "user_len": 5,
                "output_len": 4,
                "think_time": 0.25,
            },
            "load": {"rates": [1]},
        }
    )
    records = run_virtual(generate(spec, 1.0), LEAST_REQUEST, TINY).records
    for previous, turn in itertools.pairwise(records):
        assert previous.done is not None
        assert turn.sent == pytest.approx(previous.done + 0.25)
    assert records[2].cached_tokens > records[1].cached_tokens > 0, "each turn reuses the history"


def test_queue_overflow_is_an_error_not_a_hang() -> None:
    requests = workload(1, 80, rate=1e6)  # 80 at once; tiny-test queues at most 64
    result = run_virtual(requests, LEAST_REQUEST, TINY)
    errors = [r for r in result.records if r.error]
    assert errors and all(r.error == "queue_full" for r in errors)
    assert summarize(result).completed == 80 - len(errors)


def test_scraped_metrics_equal_what_the_scraper_reads_from_the_simulator() -> None:
    engine = Engine(TINY_TEST, "m")
    for i in range(12):
        engine.add(Request(str(i), list(range(1 + i * 7, 40 + i * 7)), 5, 0.0))
    engine.step(0.0)
    vllm = BUILTIN_ENGINES["vllm"]
    page = render(build_registry(engine, "m")).decode()
    scraped = vllm.read(Extractor(vllm.names()).extract(page), 1.0)
    direct = scraped_metrics(engine, 1.0)
    assert direct.waiting_queue_size == scraped.waiting_queue_size > 0
    assert direct.running_requests_size == scraped.running_requests_size > 0
    assert direct.kv_cache_usage == pytest.approx(scraped.kv_cache_usage)
    assert (direct.cache_block_size, direct.cache_num_blocks) == (
        scraped.cache_block_size,
        scraped.cache_num_blocks,
    )
    assert direct.max_active_models == scraped.max_active_models


def test_the_collector_takes_a_run_s_objects_as_old_without_a_pass() -> None:
    """The run keeps the cyclic collector off; turned back on, it must not scan what the run
    allocated (a large run's gigabytes, to find nothing): those objects go to the oldest
    generation unscanned, and the collector is on again."""
    import gc

    assert gc.isenabled()
    passes: list[int] = []

    def counted(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    run = VirtualRun(workload(), LEAST_REQUEST, TINY)
    gc.callbacks.append(counted)
    try:
        result = run.run()
        youngest = [gc.get_objects(generation) for generation in (0, 1)]
    finally:
        gc.callbacks.remove(counted)
    assert gc.isenabled()
    assert passes == []
    record = result.records[0]
    assert gc.is_tracked(record)
    assert not any(item is record for objects in youngest for item in objects)
