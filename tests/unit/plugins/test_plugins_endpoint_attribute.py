"""llm-d's endpoint-attribute filter and scorer over the scalar attributes core-metrics-extractor's
`customMetrics` keep per endpoint (llm-d router's engineConfigs extension)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from epp.config.build import build_components
from epp.config.loader import load_config
from epp.datalayer.promtext import Extractor
from epp.datastore import Endpoint
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.endpoint_attribute_filter import EndpointAttributeFilter
from epp.plugins.endpoint_attribute_scorer import EndpointAttributeScorer
from tests.unit.plugin_helpers import endpoint, plugin, request

REQ = request()
CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: core-metrics-extractor
  parameters:
    defaultEngine: vllm
    engineConfigs:
    - name: vllm
      queuedRequestsSpec: vllm:num_requests_waiting
      runningRequestsSpec: vllm:num_requests_running
      kvUsageSpec: vllm:kv_cache_usage_perc
      customMetrics:
      - {attributeKey: GPUPowerWatts, metricSpec: 'DCGM_FI_DEV_POWER_USAGE{gpu="0"}'}
- type: endpoint-attribute-filter
  parameters:
    attribute: GPUPowerWatts
    algorithm: {type: threshold, threshold: {operator: LessThan, value: 400}}
- type: endpoint-attribute-scorer
  parameters:
    attributeKey: GPUPowerWatts
    algorithm: {type: linear_lower_is_better, normalization: {fixedRange: {min: 100, max: 500}}}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: endpoint-attribute-filter}, {pluginRef: endpoint-attribute-scorer}]
"""
PAGE = (
    'vllm:num_requests_waiting{model_name="m"} 2\n'
    'DCGM_FI_DEV_POWER_USAGE{gpu="0"} 250.5\n'
    'DCGM_FI_DEV_POWER_USAGE{gpu="1"} 999\n'
)


def with_power(name: str, watts: float | None) -> Endpoint:
    e = endpoint(name)
    if watts is not None:
        e.metrics.scalars["GPUPowerWatts"] = watts
    return e


def test_custom_metrics_are_scraped_into_endpoint_scalars_and_drive_the_plugins() -> None:
    config = load_config(CONFIG)
    components = build_components(config, PluginContext())
    assert components.scrape is not None
    engine = components.scrape.engines["vllm"]
    metrics = engine.read(Extractor(engine.names()).extract(PAGE), now=1.0)
    assert metrics.waiting_queue_size == 2 and metrics.scalars == {"GPUPowerWatts": 250.5}
    cool, hot, unknown = endpoint("cool"), with_power("hot", 450.0), endpoint("unknown")
    cool.metrics = metrics
    result = components.scheduler.schedule(REQ, [hot, cool, unknown])
    assert result.targets == [cool]  # hot filtered out; unknown passes but scores 0


@pytest.mark.parametrize(
    ("operator", "value", "kept"),
    [
        ("LessThan", 300, ["a"]),
        ("LessThanOrEqual", 300, ["a", "b"]),
        ("GreaterThan", 300, ["c"]),
        ("GreaterThanOrEqual", 300, ["b", "c"]),
        ("Equal", 300, ["b"]),
        ("NotEqual", 300, ["a", "c"]),
    ],
)
def test_filter_operators(operator: str, value: float, kept: list[str]) -> None:
    params = {
        "attribute": "GPUPowerWatts",
        "onMissing": "Fail",
        "algorithm": {"type": "threshold", "threshold": {"operator": operator, "value": value}},
    }
    pool = [with_power("a", 200), with_power("b", 300), with_power("c", 400), with_power("none", None)]
    assert [e.name for e in plugin(EndpointAttributeFilter, params).filter(REQ, pool)] == kept


def test_filter_missing_and_fallback() -> None:
    base = {
        "attribute": "GPUPowerWatts",
        "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan"}},
    }
    pool = [with_power("a", 5.0), with_power("none", None)]
    assert [e.name for e in plugin(EndpointAttributeFilter, base).filter(REQ, pool)] == ["none"]  # Pass
    assert plugin(EndpointAttributeFilter, {**base, "onMissing": "Fail"}).filter(REQ, pool) == []
    fallback = plugin(EndpointAttributeFilter, {**base, "onMissing": "Fail", "fallbackOnEmpty": True})
    assert fallback.filter(REQ, pool) == pool


def test_scorer_fixed_and_adaptive_ranges() -> None:
    pool = [with_power("a", 100), with_power("b", 300), with_power("c", 700), with_power("none", None)]
    fixed = {"type": "linear_higher_is_better", "normalization": {"fixedRange": {"min": 100, "max": 500}}}
    scorer = plugin(EndpointAttributeScorer, {"attributeKey": "GPUPowerWatts", "algorithm": fixed})
    assert scorer.score(REQ, pool) == [0.0, 0.5, 1.0, 0.0]  # clamped; missing scores 0
    adaptive = {"type": "linear_lower_is_better"}
    scorer = plugin(EndpointAttributeScorer, {"attributeKey": "GPUPowerWatts", "algorithm": adaptive})
    assert scorer.score(REQ, pool) == [1.0, pytest.approx(2 / 3), 0.0, 0.0]
    assert scorer.score(REQ, [with_power("x", 5), with_power("y", 5)]) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (
            EndpointAttributeFilter,
            {"attribute": "a", "algorithm": {"type": "threshold"}},
            "threshold is required",
        ),
        (
            EndpointAttributeFilter,
            {"attribute": "a", "algorithm": {"type": "range"}},
            "Input should be 'threshold'",
        ),
        (
            EndpointAttributeFilter,
            {
                "attribute": "Power/dcgm",
                "algorithm": {"type": "threshold", "threshold": {"operator": "Equal"}},
            },
            "split it into attribute 'Power' and producer 'dcgm'",
        ),
        (
            EndpointAttributeScorer,
            {
                "attributeKey": "a",
                "algorithm": {
                    "type": "linear_lower_is_better",
                    "normalization": {"fixedRange": {"min": 1, "max": 2}, "adaptiveRange": {}},
                },
            },
            "at most one normalization strategy",
        ),
        (
            EndpointAttributeScorer,
            {
                "attributeKey": "a",
                "algorithm": {
                    "type": "linear_lower_is_better",
                    "normalization": {"fixedRange": {"min": 2, "max": 2}},
                },
            },
            "requires min < max",
        ),
    ],
)
def test_parameters_as_llm_d(cls: type, params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        plugin(cls, params)


def test_a_producer_nothing_here_stands_for_is_a_warning() -> None:
    text = CONFIG.replace(
        "attribute: GPUPowerWatts\n", "attribute: GPUPowerWatts\n    producer: dcgm-extractor\n"
    )
    config = load_config(text)
    assert any("producer 'dcgm-extractor' publishes no endpoint attributes" in w for w in config.warnings)
    with pytest.raises(ConfigError):
        load_config(text, strict=True)
