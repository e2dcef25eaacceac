"""Load and LoRA scorers against the reference formulas (gie-epp.md 3.4, llm-d.md 3.2)."""

from __future__ import annotations

import pytest

from epp.config.loader import load_config
from epp.datalayer.inflight import INFLIGHT_LOAD
from epp.params.strict import ConfigError
from epp.plugins.active_request_scorer import ActiveRequestScorer
from epp.plugins.inflight_load_producer import InFlightLoadProducer
from epp.plugins.kv_cache_utilization_scorer import KvCacheUtilizationScorer
from epp.plugins.load_aware_scorer import LoadAwareScorer
from epp.plugins.lora_affinity_scorer import LoraAffinityScorer
from epp.plugins.queue_scorer import QueueScorer
from epp.plugins.running_requests_size_scorer import RunningRequestsSizeScorer
from epp.plugins.token_load_scorer import TokenLoadScorer
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from tests.unit.plugin_helpers import endpoint, endpoints, plugin, producer_counts, request

REQ = request()


def test_queue_scorer_is_min_max_normalised() -> None:
    candidates = [endpoint(f"e{i}", queue=q) for i, q in enumerate([2, 10, 6])]
    assert plugin(QueueScorer).score(REQ, candidates) == [1.0, 0.0, 0.5]


@pytest.mark.parametrize("scorer", [QueueScorer, RunningRequestsSizeScorer])
def test_min_max_scorers_give_everyone_one_when_all_equal_or_single(scorer: type) -> None:
    assert plugin(scorer).score(REQ, endpoints(3, queue=4, running=4)) == [1.0, 1.0, 1.0]
    assert plugin(scorer).score(REQ, endpoints(1, queue=9, running=9)) == [1.0]


def test_running_requests_scorer_uses_running_not_waiting() -> None:
    candidates = [endpoint("a", running=0, queue=50), endpoint("b", running=8, queue=0)]
    assert plugin(RunningRequestsSizeScorer).score(REQ, candidates) == [1.0, 0.0]


def test_kv_cache_scorer_is_one_minus_utilisation() -> None:
    candidates = [endpoint("a", kv=0.0), endpoint("b", kv=0.25), endpoint("c", kv=1.0)]
    assert plugin(KvCacheUtilizationScorer).score(REQ, candidates) == [1.0, 0.75, 0.0]


def test_missing_metrics_read_as_an_idle_endpoint() -> None:
    never_scraped = endpoint("new")
    never_scraped.metrics.update_time = 0.0
    busy = endpoint("busy", queue=3, kv=0.5)
    assert plugin(QueueScorer).score(REQ, [never_scraped, busy]) == [1.0, 0.0]
    assert plugin(KvCacheUtilizationScorer).score(REQ, [never_scraped, busy]) == [1.0, 0.5]


def test_lora_affinity_levels() -> None:
    req = request(model="sql-lora")
    candidates = [
        endpoint("active", active={"sql-lora"}, max_lora=1),
        endpoint("free-slot", active={"other"}, max_lora=2),
        endpoint("waiting", active={"a"}, waiting={"sql-lora"}, max_lora=2),
        endpoint("full", active={"a", "b"}, max_lora=2),
        endpoint("unknown-capacity"),
    ]
    assert plugin(LoraAffinityScorer).score(req, candidates) == [1.0, 0.8, 0.6, 0.0, 0.0]


@pytest.mark.parametrize(("queue", "expected"), [(0, 0.5), (32, 0.375), (64, 0.25), (128, 0.0), (500, 0.0)])
def test_load_aware_scorer(queue: int, expected: float) -> None:
    scorer = plugin(LoadAwareScorer)
    assert scorer.score(REQ, [endpoint(queue=queue)]) == [pytest.approx(expected)]


@pytest.mark.parametrize("threshold", [0, -5])
def test_load_aware_non_positive_threshold_means_default(threshold: int) -> None:
    scorer = plugin(LoadAwareScorer, {"threshold": threshold})
    assert scorer.score(REQ, [endpoint(queue=64)]) == [pytest.approx(0.25)]


def bound_to_inflight(
    scorer_cls: type[ActiveRequestScorer | TokenLoadScorer],
    params: dict | None = None,
    producer_params: dict | None = None,
) -> tuple[InFlightLoadProducer, ActiveRequestScorer | TokenLoadScorer]:
    producer = plugin(InFlightLoadProducer, producer_params)
    scorer: ActiveRequestScorer | TokenLoadScorer = plugin(scorer_cls, params)
    scorer.bind_producer(INFLIGHT_LOAD, producer.name)
    return producer, scorer


def test_active_request_scorer_idle_and_busy() -> None:
    producer, scorer = bound_to_inflight(ActiveRequestScorer, {"idleThreshold": 1, "maxBusyScore": 0.5})
    candidates = [endpoint(f"e{i}", inflight=n) for i, n in enumerate([0, 1, 2, 4])]
    producer_counts(candidates, producer.load)
    req = request()
    producer.prepare(req, candidates)
    assert scorer.score(req, candidates) == [1.0, 1.0, 0.25, 0.0]


def test_active_request_scorer_all_idle_or_all_equal() -> None:
    producer, scorer = bound_to_inflight(ActiveRequestScorer)
    req = request()
    idle = endpoints(2)
    producer.prepare(req, idle)
    assert scorer.score(req, idle) == [1.0, 1.0]
    busy = endpoints(2, inflight=3)
    producer_counts(busy, producer.load)
    assert scorer.score(req, busy) == [0.0, 0.0]


def test_active_request_scorer_reads_the_producer_not_the_director() -> None:
    """llm-d's scorer counts what the inflight-load-producer charged, whatever else is in flight."""
    producer, scorer = bound_to_inflight(ActiveRequestScorer)
    candidates = [endpoint("busy", inflight=9), endpoint("idle")]
    req = request()
    producer.prepare(req, candidates)
    assert scorer.score(req, candidates) == [1.0, 1.0]


def test_load_scorers_score_zero_without_producer_data() -> None:
    for cls in (ActiveRequestScorer, TokenLoadScorer):
        _, scorer = bound_to_inflight(cls)
        assert scorer.score(request(), endpoints(2)) == [0.0, 0.0]


def test_token_load_scorer() -> None:
    producer, scorer = bound_to_inflight(TokenLoadScorer, {"queueThresholdTokens": 1000})
    candidates = [endpoint(f"e{i}", inflight_tokens=t) for i, t in enumerate([0, 250, 1000, 5000, -3])]
    producer_counts(candidates, producer.load)
    req = request()  # an empty prompt adds nothing
    producer.prepare(req, candidates)
    assert scorer.score(req, candidates) == [1.0, 0.75, 0.0, 0.0, 1.0]


def test_token_load_scorer_adds_the_requests_own_uncached_tokens() -> None:
    """llm-d adds UncachedRequestTokens: the prompt minus what each candidate has cached."""
    producer, scorer = bound_to_inflight(TokenLoadScorer, {"queueThresholdTokens": 1000})
    producer.bind_producer(PREFIX_MATCH, "prefix")
    warm, cold = endpoint("warm", inflight_tokens=100), endpoint("cold", inflight_tokens=100)
    producer_counts([warm, cold], producer.load)
    req = request("x" * 800)  # 200 tokens: 12 blocks of 16 indexed, 8 tokens of tail
    req.attributes["prefix"] = PrefixMatch(list(range(12)), {warm: 10}, 16)
    producer.prepare(req, [warm, cold])
    # warm: 100 + (2 x 16 + 8) = 140; cold: 100 + 200 = 300
    assert scorer.score(req, [warm, cold]) == [pytest.approx(0.86), pytest.approx(0.7)]


def test_token_load_scorer_threshold_of_zero_or_less_is_the_default_as_in_llm_d() -> None:
    for threshold in (0, -5):
        assert plugin(TokenLoadScorer, {"queueThresholdTokens": threshold}).threshold == 4_194_304


def test_token_load_scorer_reads_the_named_inflight_load_producer() -> None:
    config = load_config(
        """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: inflight-load-producer, name: plain}
- {type: inflight-load-producer, name: with-outputs, parameters: {addEstimatedOutputTokens: true}}
- {type: token-load-scorer, parameters: {inFlightLoadProducerName: with-outputs}}
schedulingProfiles:
- {name: default, plugins: [{pluginRef: token-load-scorer}]}
"""
    )
    assert config.producer_bindings[("token-load-scorer", "InFlightLoad")] == "with-outputs"
    with pytest.raises(ConfigError, match="inFlightLoadProducerName names 'nobody'"):
        load_config(
            """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: token-load-scorer, parameters: {inFlightLoadProducerName: nobody}}
"""
        )
