"""InferenceModelRewrite: which rule applies, how targets are drawn, what the director sends."""

from __future__ import annotations

import random
from collections import Counter
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requestcontrol import Director
from epp.requestcontrol.model_rewrite import ModelRewrite, ModelRewrites, parse_model_rewrite


def rewrite(name: str, created: str, *rules: tuple[list[str], list[tuple[str, int]]]) -> ModelRewrite:
    obj: dict[str, Any] = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {
            "poolRef": {"name": "pool"},
            "rules": [
                {
                    "matches": [{"model": {"value": m}} for m in models],
                    "targets": [{"modelRewrite": t, "weight": w} for t, w in targets],
                }
                for models, targets in rules
            ],
        },
    }
    return parse_model_rewrite(obj)


OLD, NEW = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"


def test_an_exact_match_beats_a_generic_rule_and_the_oldest_object_wins() -> None:
    rewrites = ModelRewrites(
        [
            rewrite("generic-old", OLD, ([], [("fallback-old", 1)])),
            rewrite("generic-new", NEW, ([], [("fallback-new", 1)])),
            rewrite("exact-new", NEW, (["llama"], [("llama-new", 1)])),
            rewrite("exact-old", OLD, (["llama", "qwen"], [("llama-old", 1)])),
        ]
    )
    assert rewrites.choose("llama") == ("exact-old", "llama-old")
    assert rewrites.choose("qwen") == ("exact-old", "llama-old")
    assert rewrites.choose("anything") == ("generic-old", "fallback-old")


def test_without_a_generic_rule_other_models_are_left_alone() -> None:
    rewrites = ModelRewrites([rewrite("r", OLD, (["llama"], [("llama-v2", 1)]))])
    assert rewrites.choose("qwen") is None
    assert not ModelRewrites()


def test_equal_timestamps_are_broken_by_name() -> None:
    rules = [rewrite(n, OLD, (["m"], [(f"{n}-target", 1)])) for n in ("b", "a", "c")]
    assert ModelRewrites(rules).choose("m") == ("a", "a-target")


def test_targets_are_drawn_by_weight() -> None:
    rewrites = ModelRewrites(
        [rewrite("canary", OLD, (["lora"], [("lora-v1", 90), ("lora-v2", 10)]))], rng=random.Random(7)
    )
    drawn = Counter(rewrites.choose("lora")[1] for _ in range(10_000))  # type: ignore[index]
    assert 0.88 < drawn["lora-v1"] / 10_000 < 0.92
    assert drawn.keys() == {"lora-v1", "lora-v2"}


def test_targets_without_weights_are_drawn_evenly() -> None:
    rewrites = ModelRewrites([rewrite("even", OLD, (["m"], [("a", 0), ("b", 0)]))], rng=random.Random(1))
    drawn = Counter(rewrites.choose("m")[1] for _ in range(4_000))  # type: ignore[index]
    assert 0.45 < drawn["a"] / 4_000 < 0.55


def test_invalid_objects_are_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match="apiVersion"):
        parse_model_rewrite(
            {
                "apiVersion": "inference.networking.k8s.io/v1alpha2",
                "kind": "InferenceModelRewrite",
                "metadata": {"name": "x"},
                "spec": {"poolRef": {"name": "p"}, "rules": [{"targets": [{"modelRewrite": "m"}]}]},
            }
        )
    with pytest.raises(ValueError, match="targets"):
        parse_model_rewrite(
            {
                "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
                "kind": "InferenceModelRewrite",
                "metadata": {"name": "x"},
                "spec": {"poolRef": {"name": "p"}, "rules": [{"targets": []}]},
            }
        )


def director(models: tuple[str, ...]) -> Director:
    datastore = Datastore()
    datastore.replace_all(
        [
            EndpointSpec(
                name="e", address="10.0.0.1", port=8000, models=frozenset(models), labels=MappingProxyType({})
            )
        ]
    )
    built, _ = build_director(load_config(), datastore, PluginContext(EppMetrics()))
    return built


def test_the_director_sends_the_rewritten_model_and_counts_the_decision() -> None:
    epp = director(("llama-v2",))
    epp.model_rewrites.replace([rewrite("alias", OLD, (["llama"], [("llama-v2", 1)]))])
    body = orjson.dumps({"model": "llama", "prompt": "hi"})
    headers = {":path": "/v1/completions", "x-gateway-model-name-rewrite": "ignored-by-the-rule"}
    routed = epp.handle_body(body, headers, None)
    assert routed.request.target_model == "llama-v2"
    assert routed.body is not None and orjson.loads(routed.body)["model"] == "llama-v2"
    assert routed.restore_model(b'{"model":"llama-v2"}') == b'{"model":"llama"}'
    decisions = epp.metrics.registry.get_sample_value(
        "inference_extension_model_rewrite_decisions_total",
        {"model_rewrite_name": "alias", "model_name": "llama", "target_model": "llama-v2"},
    )
    assert decisions == 1
    routed.finish()


def test_without_a_matching_rule_the_header_still_rewrites() -> None:
    epp = director(("from-header",))
    epp.model_rewrites.replace([rewrite("other", OLD, (["qwen"], [("qwen-v2", 1)]))])
    body = orjson.dumps({"model": "llama", "prompt": "hi"})
    routed = epp.handle_body(
        body, {":path": "/v1/completions", "x-gateway-model-name-rewrite": "from-header"}, None
    )
    assert routed.request.target_model == "from-header"
    routed.finish()


def test_rewrite_decisions_for_invented_model_names_are_capped() -> None:
    metrics = EppMetrics()
    for i in range(300):
        metrics.model_rewritten("generic", f"invented-{i}", "base")
    names = {
        s.labels["model_name"]
        for family in metrics.registry.collect()
        if family.name == "inference_extension_model_rewrite_decisions"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert len(names) == 257  # 256 series, then "other"
    assert "other" in names


def test_a_rewritten_body_keeps_the_clients_integers_beyond_64_bits() -> None:
    """orjson read 100000000000000000000 as 1e+20 and wrote the rewritten body with `1e20`: the
    model server got another request (a seed, a logit_bias value, a field of the client's own)."""
    epp = director(("llama-v2",))
    epp.model_rewrites.replace([rewrite("alias", OLD, (["llama"], [("llama-v2", 1)]))])
    body = (
        b'{"model": "llama", "prompt": "hi", "seed": 100000000000000000000,'
        b' "extra_field": {"n": -9223372036854775809, "ids": [18446744073709551616]}}'
    )
    routed = epp.handle_body(body, {":path": "/v1/completions"}, None)
    assert routed.body == (
        b'{"model":"llama-v2","prompt":"hi","seed":100000000000000000000,'
        b'"extra_field":{"n":-9223372036854775809,"ids":[18446744073709551616]}}'
    )
    routed.finish()
