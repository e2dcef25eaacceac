"""Kthena's LeastRequest + KVCacheAware, fed by the simulator's own KV events."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from epp.bench.peers.kthena_kvcache_aware_scorer import KthenaKVCacheAwareScorer, KVCacheAwareParams
from epp.bench.peers.kthena_least_request import KthenaLeastRequest, KthenaLeastRequestParams
from epp.bench.summary import summarize
from epp.bench.virtual import VirtualCluster, VirtualRun
from epp.bench.workload import WorkloadSpec, generate
from epp.config.loader import load_config_file
from epp.datastore import Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.kvevents import BlockRemoved, BlockStored, decode_events, encode_batch
from epp.metrics.exporter import EppMetrics
from epp.requests.parser import parse_request
from epp.sim.engine import Engine, Request
from epp.sim.profiles import TINY_TEST
from epp.sim.tokens import tokenize

CONTEXT = PluginContext(EppMetrics(), random.Random(0))
ANY = parse_request(b'{"model": "m", "prompt": "hi"}', "/v1/completions", {}, "r")


def endpoint(i: int, running: int = 0, waiting: int = 0) -> Endpoint:
    e = Endpoint(EndpointSpec(f"e{i}", f"10.0.0.{i}", 8000))
    e.metrics.running_requests_size, e.metrics.waiting_queue_size = running, waiting
    return e


def test_least_request_filters_long_queues_and_scores_running_plus_100_waiting() -> None:
    plugin = KthenaLeastRequest("lr", KthenaLeastRequestParams(), CONTEXT)
    candidates = [endpoint(0, running=50), endpoint(1, running=10, waiting=1), endpoint(2, waiting=10)]
    assert [e.name for e in plugin.filter(None, candidates)] == ["e0", "e1"]  # type: ignore[arg-type]
    # bases 50, 110, 1000 -> (1000 - base) / 1000, truncated to whole percent
    assert plugin.score(ANY, candidates) == [0.95, 0.89, 0.0]
    assert plugin.score(ANY, [endpoint(0), endpoint(1)]) == [1.0, 1.0]


def test_kv_cache_aware_scores_the_engines_real_cache_from_its_events() -> None:
    scorer = KthenaKVCacheAwareScorer("kv", KVCacheAwareParams(blockSizeToHash=16), CONTEXT)
    prompt = " ".join(["word"] * 100)  # 100 tokens: 6 full blocks of 16
    engine = Engine(TINY_TEST, "m", record_kv_events=True)
    engine.add(Request("r", tokenize(prompt), 1, 0.0))
    while engine.has_work():
        engine.step(0.0)
    wire = encode_batch(engine.drain_kv_events(), 0.0, 16, {})
    scorer.apply_kv_events("10.0.0.0:8000", decode_events(wire))  # as if read from ZMQ
    request = parse_request(b'{"model": "m", "prompt": "%s"}' % prompt.encode(), "/v1/completions", {}, "r")
    candidates = [endpoint(0), endpoint(1)]
    assert scorer.score(request, candidates) == [1.0, 0.0]
    longer = parse_request(
        b'{"model": "m", "prompt": "%s more words here"}' % prompt.encode(), "/v1/completions", {}, "r"
    )
    assert scorer.score(longer, candidates) == [int(6 / 6 * 100) / 100, 0.0]
    first_block = scorer.block_hashes(request)[0]
    scorer.apply_kv_events("10.0.0.0:8000", [BlockRemoved([first_block])])
    assert scorer.score(request, candidates) == [0.0, 0.0], "without the first block nothing matches"
    scorer.apply_kv_events("10.0.0.1:8000", [BlockStored(scorer.block_hashes(request)[:3], None, [], None)])
    assert scorer.score(request, candidates) == [0.0, 0.5]


def test_virtual_runs_feed_the_engines_events_to_the_scorer() -> None:
    spec = WorkloadSpec.model_validate(
        {
            "name": "t",
            "data": {
                "type": "shared_prefix",
                "num_groups": 2,
                "num_prompts_per_group": 6,
                "system_prompt_len": 64,
                "question_len": 8,
                "output_len": 4,
            },
            "load": {"rates": [20]},
        }
    )
    config = load_config_file(Path(__file__).parents[4] / "bench" / "configs" / "kthena.yaml")
    requests = generate(spec, 20.0)
    run = VirtualRun(requests, config, VirtualCluster(3, TINY_TEST))
    result = run.run()
    assert all(r.ok for r in result.records)
    assert summarize(result).hit_rate > 0.5
    scorer = next(p for p in run.sinks if isinstance(p, KthenaKVCacheAwareScorer))
    body = orjson.dumps(requests[0].body("sim-model"))
    scores = scorer.score(parse_request(body, requests[0].path, {}, "r"), run.endpoints)
    assert max(scores) == 1.0, "the engines' cached prompts reached the scorer"
