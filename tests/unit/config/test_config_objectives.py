"""Standalone objective priorities from InferenceObjective YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config.objectives import load_objectives, load_objectives_file
from epp.params.strict import ConfigError

OBJECTIVE = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata:
  name: {name}
  namespace: default
  uid: 1234
spec:
  priority: {priority}
  poolRef:
    name: vllm-pool
"""


def test_documents_and_lists_as_kubectl_prints_them() -> None:
    text = (
        OBJECTIVE.format(name="critical", priority=10)
        + "---\n"
        + """
apiVersion: v1
kind: List
items:
- apiVersion: inference.networking.x-k8s.io/v1alpha2
  kind: InferenceObjective
  metadata: {name: batch}
  spec: {priority: -1}
  status: {conditions: []}
- apiVersion: inference.networking.x-k8s.io/v1alpha2
  kind: InferenceObjective
  metadata: {name: default-priority}
  spec: {}
"""
    )
    assert load_objectives(text) == {"critical": 10, "batch": -1, "default-priority": 0}


def test_empty_file_means_no_objectives() -> None:
    assert load_objectives("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: ConfigMap\n", "objectives: document 1: expected kind InferenceObjective, got 'ConfigMap'"),
        ("- a\n", "objectives: document 1: expected kind InferenceObjective, got 'list'"),
        (
            OBJECTIVE.format(name="x", priority="high"),
            "objectives: document 1.spec.priority: Input should be a valid integer",
        ),
        (
            OBJECTIVE.format(name="x", priority=1).replace(
                "priority: 1", "priority: 1\n  criticality: Critical"
            ),
            "objectives: document 1.spec.criticality: unknown field (allowed: priority, poolRef)",
        ),
        (
            OBJECTIVE.format(name="x", priority=1).replace("inference.networking.x-k8s.io/v1alpha2", "v1"),
            "objectives: document 1.apiVersion: expected inference.networking.x-k8s.io/<version>, got 'v1'",
        ),
        (
            OBJECTIVE.format(name="x", priority=1) + "---\n" + OBJECTIVE.format(name="x", priority=2),
            "objectives: document 2.metadata.name: objective 'x' is defined twice",
        ),
        ("a: [", "objectives: not valid YAML"),
        ("a: " + "[" * 100_000 + "]" * 100_000, "objectives: not valid YAML"),
        ("kind: InferenceObjective\nkind: InferenceObjective\n", "objectives: not valid YAML"),
    ],
)
def test_invalid_objectives(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_objectives(text)
    assert str(caught.value).startswith(message)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "objectives.yaml"
    path.write_text("kind: Pod\n")
    with pytest.raises(ConfigError, match=f"{path}: document 1: expected kind"):
        load_objectives_file(path)
    with pytest.raises(ConfigError, match="cannot read objectives file"):
        load_objectives_file(tmp_path / "missing.yaml")


def test_every_problem_is_reported_at_once() -> None:
    text = (
        OBJECTIVE.format(name="x", priority="high")
        + "---\nkind: ConfigMap\n---\n"
        + OBJECTIVE.format(name="y", priority=1).replace("inference.networking.x-k8s.io/v1alpha2", "v1")
    )
    with pytest.raises(ConfigError) as caught:
        load_objectives(text)
    assert str(caught.value) == (
        "objectives: document 1.spec.priority: Input should be a valid integer; "
        "objectives: document 2: expected kind InferenceObjective, got 'ConfigMap'; "
        "objectives: document 3.apiVersion: expected inference.networking.x-k8s.io/<version>, got 'v1'"
    )
