"""`vllm-priority-field`: the InferenceObjective's priority, negated, in vLLM's `priority` body field."""

from __future__ import annotations

import time

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.requestcontrol import RoutedRequest

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: vllm-priority-field
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
"""
OBJECTIVES = {"critical": 1, "sheddable": -1, "standard": 0}


def routed(config: str, body: dict[str, object], objective: str | None) -> RoutedRequest:
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=8000))
    store.synced = True
    (endpoint,) = store.ready_endpoints()
    endpoint.metrics.update_time = time.monotonic()  # fresh and idle: sheddable requests pass
    director, _ = build_director(load_config(config), store, PluginContext(), objectives=OBJECTIVES)
    headers = {":path": "/v1/completions"}
    if objective is not None:
        headers["x-gateway-inference-objective"] = objective
    return director.handle_body(orjson.dumps(body), headers, None)


@pytest.mark.parametrize(
    ("objective", "sent"),
    [("critical", -1), ("sheddable", 1)],
)
def test_the_objective_priority_goes_to_the_body_negated(objective: str, sent: int) -> None:
    result = routed(CONFIG, {"model": "m", "prompt": "hi"}, objective)
    assert result.body is not None
    assert orjson.loads(result.body) == {"model": "m", "prompt": "hi", "priority": sent}


@pytest.mark.parametrize("objective", ["standard", None, "unknown-objective"])
def test_the_default_band_forwards_the_body_unchanged(objective: str | None) -> None:
    """Priority 0: no field, so a server on vLLM's FCFS policy (which refuses non-zero) accepts it."""
    assert routed(CONFIG, {"model": "m", "prompt": "hi"}, objective).body is None


def test_a_client_priority_is_replaced_by_the_objective() -> None:
    result = routed(CONFIG, {"model": "m", "prompt": "hi", "priority": -100}, None)
    assert result.body is not None and orjson.loads(result.body)["priority"] == 0
    result = routed(CONFIG, {"model": "m", "prompt": "hi", "priority": -100}, "sheddable")
    assert result.body is not None and orjson.loads(result.body)["priority"] == 1


def test_off_by_default() -> None:
    without = CONFIG.replace("- type: vllm-priority-field\n", "")
    assert routed(without, {"model": "m", "prompt": "hi"}, "critical").body is None
