"""mm-embeddings-cache-producer and mm-embeddings-cache-scorer (llm-d router): per-endpoint LRUs
of the multimodal items routed there, the share of a request's items each candidate holds, the
metrics, and llm-d's deploy/config/epp-mm-embeddings-cache-config.yaml routing an image back to
the replica that encoded it."""

from __future__ import annotations

from pathlib import Path

import orjson

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datalayer.tokenize import MultiModalFeature, TokenizedPrompt
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.plugins.mm_embeddings_cache_producer import MMEmbeddingsCacheProducer
from epp.plugins.mm_embeddings_cache_scorer import MMEmbeddingsCacheScorer
from epp.plugins.token_producer import TokenProducer
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.encoder_cache import EncoderCacheMatch
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import context, endpoints, plugin

UPSTREAM = Path(__file__).parents[2] / "data/upstream/configs"
CONFIG = UPSTREAM / "llmd-router-ebab687__deploy__config__epp-mm-embeddings-cache-config.yaml"


def request_with(*hashes: str) -> InferenceRequest:
    request = InferenceRequest("r", ApiKind.CHAT, "/v1/chat/completions", "m", {}, body={})
    features = tuple(MultiModalFeature("image", h, 4 * i, 4) for i, h in enumerate(hashes))
    request.attributes["tok"] = TokenizedPrompt([1] * (4 * len(hashes)), "render", features)
    return request


def pair(
    params: dict[str, int] | None = None, ctx: PluginContext | None = None
) -> tuple[MMEmbeddingsCacheProducer, MMEmbeddingsCacheScorer]:
    ctx = ctx or context()
    producer = plugin(MMEmbeddingsCacheProducer, params or {}, ctx)
    producer.bind_producer(next(iter(producer.consumes)), "tok")
    scorer = plugin(MMEmbeddingsCacheScorer, {}, ctx)
    scorer.bind_producer(next(iter(scorer.consumes)), producer.name)
    return producer, scorer


def routed_to(producer: MMEmbeddingsCacheProducer, request: InferenceRequest, *targets: Endpoint) -> None:
    """Scheduled (the producer's lookup), then routed to `targets` (its PreRequest)."""
    producer.prepare(request, targets)
    producer.pre_request(request, SchedulingResult({"default": ProfileResult(list(targets))}, "default"))


def test_items_routed_to_an_endpoint_score_there() -> None:
    producer, scorer = pair()
    pods = endpoints(3)
    first = request_with("a", "b", "a")  # a repeated item counts once
    producer.prepare(first, pods)
    match = first.attributes[producer.name]
    assert isinstance(match, EncoderCacheMatch) and [i.hash for i in match.items] == ["a", "b"]
    assert scorer.score(first, pods) == [0.0, 0.0, 0.0]
    routed_to(producer, first, pods[1])
    second = request_with("b", "c")
    producer.prepare(second, pods)
    assert scorer.score(second, pods) == [0.0, 0.5, 0.0]
    producer.endpoint_removed(pods[1])
    producer.prepare(second, pods)
    assert scorer.score(second, pods) == [0.0, 0.0, 0.0]


def test_a_request_without_multimodal_items_scores_zero_everywhere() -> None:
    producer, scorer = pair()
    pods = endpoints(2)
    routed_to(producer, request_with("a"), pods[0])
    text = request_with()
    text.attributes[producer.name] = "stale"
    producer.prepare(text, pods)
    assert producer.name not in text.attributes
    assert scorer.score(text, pods) == [0.0, 0.0]
    producer.pre_request(text, SchedulingResult({"default": ProfileResult([pods[1]])}, "default"))
    assert "e1" not in producer.caches


def test_each_endpoint_remembers_its_size_in_items_least_recently_routed_first() -> None:
    assert plugin(MMEmbeddingsCacheProducer).capacity == 2048  # 4096 MiB / 2 MiB
    assert plugin(MMEmbeddingsCacheProducer, {"cacheSizeInMBPerServer": -5}).capacity == 2048
    assert plugin(MMEmbeddingsCacheProducer, {"cacheSizeInMBPerServer": 1}).capacity == 1
    producer, _ = pair({"cacheSizeInMBPerServer": 4})  # two items
    pods = endpoints(1)
    for item in ("a", "b"):
        routed_to(producer, request_with(item), pods[0])
    lookup = request_with("a")
    producer.prepare(lookup, pods)  # a lookup does not make "a" recent
    routed_to(producer, request_with("c"), pods[0])
    assert list(producer.caches["e0"]) == ["b", "c"]
    routed_to(producer, request_with("b"), pods[0])  # routing does
    assert list(producer.caches["e0"]) == ["c", "b"]


def test_lookups_and_hits_are_counted_under_llm_d_names() -> None:
    ctx = context()
    producer, _ = pair(ctx=ctx)
    pods = endpoints(2)
    routed_to(producer, request_with("a"), pods[0], pods[1])  # 1 query; every primary target records
    producer.prepare(request_with("a", "b"), pods)  # 2 queries; "a" held by both
    registry = ctx.metrics.registry
    labels = {"plugin_type": "mm-embeddings-cache-producer", "plugin_name": producer.name}
    queries = registry.get_sample_value(
        "llm_d_epp_encoder_cache_queries_total", {**labels, "modality": "image"}
    )
    assert queries == 3
    for pod in ("e0", "e1"):
        hits = registry.get_sample_value(
            "llm_d_epp_encoder_cache_hits_total", {**labels, "pod": pod, "modality": "image"}
        )
        assert hits == 1
    # One ratio per endpoint and lookup: 0 and 0 before routing, then 0.5 and 0.5.
    assert registry.get_sample_value("llm_d_epp_encoder_cache_hit_ratio_count", labels) == 4
    assert registry.get_sample_value("llm_d_epp_encoder_cache_hit_ratio_sum", labels) == 1.0


def test_the_upstream_config_sends_an_image_back_to_the_replica_that_encoded_it() -> None:
    # The config's token-producer asks a vLLM render API; here the estimate backend hashes the
    # chat's images instead (the render API's features are covered in test_tokenize).
    text = CONFIG.read_text().replace("      vllm:\n        url: http://localhost:8000\n", "")
    text = text.replace("modelName: hf-repo/model-name", "estimate: {}")
    config = load_config(text)
    datastore = Datastore()
    datastore.replace_all([EndpointSpec(name=f"p{i}", address="10.0.0.1", port=8000 + i) for i in range(4)])
    director, components = build_director(config, datastore, context(seed=11))
    token_producer = components.plugins["token-producer"]
    assert isinstance(token_producer, TokenProducer) and token_producer.backend == "estimate"
    headers = {":path": "/v1/chat/completions", ":method": "POST"}

    def route(image: str, question: str) -> str:
        content = [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": f"https://images.example/{image}.png"}},
        ]
        raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
        routed = director.handle_body(raw, headers, None)
        routed.finish()
        return routed.result.targets[0].name

    pods = {e.name: e for e in datastore.ready_endpoints()}

    def queues(short: str) -> None:
        """Every queue long but `short`'s: queue-scorer prefers it."""
        for name, endpoint in pods.items():
            endpoint.metrics.waiting_queue_size = 0 if name == short else 5

    first = {"cat": "p1", "dog": "p2", "owl": "p3"}
    for image, pod in first.items():
        queues(pod)
        assert route(image, "what is this?") == pod
    for n in range(6):  # other questions on the same images, while p0 has the shortest queue
        queues("p0")
        image = ("cat", "dog", "owl")[n % 3]
        assert route(image, f"question {n} about it") == first[image]
    hits = director.metrics.registry.get_sample_value(
        "llm_d_epp_encoder_cache_hits_total",
        {
            "plugin_type": "mm-embeddings-cache-producer",
            "plugin_name": "mm-embeddings-cache-producer",
            "pod": first["cat"],
            "modality": "image",
        },
    )
    assert hits == 2
