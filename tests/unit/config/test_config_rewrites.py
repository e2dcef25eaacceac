"""InferenceModelRewrite files for standalone mode, including GIE's own examples unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config.rewrites import load_model_rewrites, load_model_rewrites_file
from epp.params.strict import ConfigError
from epp.requestcontrol.model_rewrite import ModelRewrites

UPSTREAM = Path(__file__).parents[2] / "data" / "upstream" / "manifests"


def upstream(name: str) -> Path:
    return UPSTREAM / f"gie-v1.5.0__{name}.yaml"


def test_gie_examples_load_unchanged() -> None:
    canary = load_model_rewrites_file(upstream("site-src__guides__adapter-rollout.md__block6"))
    assert [(r.name, r.pool_name, r.pool_group) for r in canary] == [
        ("small-segment-lora-rewrite", "vllm-qwen3-32b", "inference.networking.k8s.io")
    ]
    assert canary[0].rules[0].targets == (("small-segment-lora-v1", 90), ("small-segment-lora-v2", 10))
    alias = load_model_rewrites_file(upstream("site-src__api-types__inferencemodelrewrite.md__block1"))
    assert ModelRewrites(alias).choose("small-segment-lora") == (
        "small-segment-lora-alias",
        "small-segment-lora-v1",
    )


@pytest.mark.parametrize(
    ("example", "written"),
    [
        ("site-src__api-types__inferencemodelrewrite.md__block2", "inference.networking.k8s.io/v1alpha2"),
        (
            "docs__proposals__1816-inferenceomodelrewrite__README.md__block2",
            "inference.networking.x-k8s.io/v1alpha1",
        ),
    ],
)
def test_gie_doc_examples_with_an_apiversion_no_crd_serves_are_refused(example: str, written: str) -> None:
    """GIE's API page and proposal print apiVersions no CRD serves (kubectl would refuse them
    too): the error names what is expected and what was written."""
    with pytest.raises(ConfigError) as caught:
        load_model_rewrites_file(upstream(example))
    assert "apiVersion: expected inference.networking.x-k8s.io/v1alpha2 or llm-d.ai/v1alpha2" in str(
        caught.value
    )
    assert repr(written) in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    text = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: a}
spec: {poolRef: {name: p}, rules: [{targets: [{modelRewrite: x, weight: 0}]}]}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: a}
spec: {poolRef: {name: p}, rules: [{targets: []}]}
---
kind: InferenceObjective
metadata: {name: o}
"""
    with pytest.raises(ConfigError) as caught:
        load_model_rewrites(text, "f.yaml")
    message = str(caught.value)
    assert "f.yaml: document 2.spec.rules[0].targets" in message
    assert "f.yaml: document 3: expected kind InferenceModelRewrite, got 'InferenceObjective'" in message


def test_a_list_as_kubectl_prints_it_loads() -> None:
    text = """
apiVersion: v1
kind: List
items:
- apiVersion: llm-d.ai/v1alpha2
  kind: InferenceModelRewrite
  metadata: {name: a, creationTimestamp: "2026-01-01T00:00:00Z", uid: x, resourceVersion: "3"}
  spec: {poolRef: {name: p}, rules: [{matches: [{model: {value: m}}], targets: [{modelRewrite: n}]}]}
  status: {conditions: []}
"""
    assert [r.name for r in load_model_rewrites(text)] == ["a"]
