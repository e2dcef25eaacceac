"""GIE v0.4-v0.5's filters and their decision tree, with llm-d-benchmark's copy of GIE's original
default scheduler (low queue? LoRA affinity, least queue, least KV cache; else ...)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from epp.config.build import build_components
from epp.config.loader import load_config, load_config_file
from epp.datastore import Endpoint
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.least_kv_cache_filter import LeastKVCacheFilter
from epp.plugins.least_queue_filter import LeastQueueFilter
from epp.plugins.lora_affinity_filter import LoraAffinityFilter
from epp.plugins.low_queue_filter import LowQueueFilter
from epp.requests import InferenceRequest
from tests.unit.plugin_helpers import context, endpoint, plugin, request

UPSTREAM = Path(__file__).parents[2] / "data" / "upstream" / "configs"
REQ = request(model="tweet-summary")


def names(endpoints: list[Endpoint]) -> list[str]:
    return [e.name for e in endpoints]


def test_least_queue_keeps_the_lowest_band_with_integer_division() -> None:
    pool = [endpoint(f"e{q}", queue=q) for q in (0, 3, 4, 10)]
    # band = 0 + (10 - 0) // 4 = 2
    assert names(plugin(LeastQueueFilter).filter(REQ, pool)) == ["e0"]
    pool = [endpoint(f"e{q}", queue=q) for q in (5, 6, 7)]  # band 5 + 2 // 3 = 5
    assert names(plugin(LeastQueueFilter).filter(REQ, pool)) == ["e5"]
    same = [endpoint(f"s{i}", queue=2) for i in range(3)]
    assert names(plugin(LeastQueueFilter).filter(REQ, same)) == ["s0", "s1", "s2"]


def test_least_kv_cache_keeps_the_lowest_band() -> None:
    pool = [endpoint("a", kv=0.1), endpoint("b", kv=0.3), endpoint("c", kv=0.9)]
    # band = 0.1 + 0.8 / 3 = 0.367
    assert names(plugin(LeastKVCacheFilter).filter(REQ, pool)) == ["a", "b"]
    assert plugin(LeastKVCacheFilter).filter(REQ, []) == []


def test_low_queue_threshold() -> None:
    pool = [endpoint("a", queue=128), endpoint("b", queue=129)]
    assert names(plugin(LowQueueFilter).filter(REQ, pool)) == ["a"]
    assert names(plugin(LowQueueFilter, {"threshold": 0}).filter(REQ, pool)) == []


class Draw(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def lora(draw: float, threshold: float = 0.999) -> LoraAffinityFilter:
    base = context()
    return plugin(
        LoraAffinityFilter, {"threshold": threshold}, PluginContext(base.metrics, Draw(draw), base.clock)
    )


def test_lora_affinity_prefers_loaded_adapters_then_room() -> None:
    loaded = endpoint("loaded", active={"tweet-summary"}, max_lora=2)
    waiting = endpoint("waiting", waiting={"tweet-summary"}, max_lora=2)
    room = endpoint("room", active={"other"}, max_lora=2)
    full = endpoint("full", active={"x", "y"}, max_lora=2)
    unknown = endpoint("unknown")  # max adapters unknown: never "available"
    pool = [loaded, waiting, room, full, unknown]
    assert names(lora(0.5).filter(REQ, pool)) == ["loaded", "waiting"]
    assert names(lora(0.9995).filter(REQ, pool)) == ["room"]  # the 0.1% exploration
    assert names(lora(0.0).filter(REQ, [room, full])) == ["room"]
    assert lora(0.0).filter(REQ, [full, unknown]) == []


TREE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: low-queue-filter, parameters: {threshold: 5}}
- type: least-queue-filter
- type: least-kv-cache-filter
- type: decision-tree-filter
  name: tree
  parameters: TREE
- type: single-profile-handler
schedulingProfiles:
- {name: default, plugins: [{pluginRef: tree}]}
"""


def tree(parameters: str) -> object:
    config = load_config(TREE.replace("TREE", parameters))
    return build_components(config, PluginContext()).plugins["tree"]


def run(parameters: str, pool: list[Endpoint], req: InferenceRequest = REQ) -> list[str]:
    flt = tree(parameters)
    return names(flt.filter(req, pool))  # type: ignore[attr-defined]


def test_decision_tree_success_failure_and_either_branches() -> None:
    pool = [endpoint("idle", queue=0, kv=0.9), endpoint("busy", queue=50, kv=0.1)]
    on_success = "{current: {pluginRef: low-queue-filter}, nextOnSuccess: {pluginRef: least-kv-cache-filter}}"
    assert run(on_success, pool) == ["idle"]  # low queue kept idle only; least kv among [idle]
    both_busy = [endpoint("b1", queue=50, kv=0.9), endpoint("b2", queue=60, kv=0.1)]
    assert run(on_success, both_busy) == []  # failed, no failure branch: nothing
    with_failure = on_success[:-1] + ", nextOnFailure: {pluginRef: least-kv-cache-filter}}"
    assert run(with_failure, both_busy) == ["b2"]  # failure branch runs on the original candidates
    either = (
        "{current: {pluginRef: low-queue-filter}, nextOnSuccessOrFailure: {pluginRef: least-queue-filter}}"
    )
    assert run(either, both_busy) == ["b1"]
    nested = (
        "{current: {pluginRef: least-queue-filter}, nextOnSuccess: {decisionTree: "
        "{current: {pluginRef: least-kv-cache-filter}}}}"
    )
    equal_queues = [endpoint("q1", queue=1, kv=0.5), endpoint("q2", queue=1, kv=0.2)]
    assert run(nested, equal_queues) == ["q2"]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{current: {pluginRef: nope}}", "plugins[3].parameters.current.pluginRef: no plugin named 'nope'"),
        (
            "{current: {pluginRef: single-profile-handler}}",
            "plugins[3].parameters.current.pluginRef: plugin 'single-profile-handler' is a "
            "single-profile-handler, not a filter",
        ),
        (
            "{current: {pluginRef: low-queue-filter}, "
            "nextOnFailure: {decisionTree: {current: {pluginRef: x}}}}",
            "plugins[3].parameters.nextOnFailure.decisionTree.current.pluginRef: no plugin named 'x'",
        ),
        ("{current: {}}", "give exactly one of pluginRef and decisionTree"),
        ("{}", "current: Field required"),
    ],
)
def test_decision_tree_references_are_checked_at_load(parameters: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(TREE.replace("TREE", parameters))
    assert message in str(caught.value)


def test_llm_d_benchmark_gie_default_preset_routes_as_gie_v05() -> None:
    config = load_config_file(UPSTREAM / "llmd-bench-v0.5.0__setup__presets__gaie__default.yaml")
    components = build_components(config, PluginContext())
    adapter = request(model="sql-lora")
    loaded = endpoint("loaded", queue=10, active={"sql-lora"}, max_lora=4)
    idle = endpoint("idle", queue=0, max_lora=4)
    flooded = endpoint("flooded", queue=500, active={"sql-lora"}, max_lora=4)
    result = components.scheduler.schedule(adapter, [loaded, idle, flooded])
    # low queue keeps loaded + idle; LoRA affinity (p 0.999) keeps loaded, or idle in the 0.1%.
    assert result.targets[0] in (loaded, idle)
    with pytest.raises(ValidationError):
        plugin(LowQueueFilter, {"threshold": "x"})
