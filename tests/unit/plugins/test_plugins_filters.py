"""Role, label and utilization filters, the GIE conformance filter, and both saturation detectors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from epp.config.build import build_components
from epp.config.loader import load_config
from epp.datastore import Endpoint
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.by_label_filter import ByLabelFilter
from epp.plugins.concurrency_detector import ConcurrencyDetector
from epp.plugins.decode_filter import DecodeFilter
from epp.plugins.encode_filter import EncodeFilter
from epp.plugins.header_based_testing_filter import HeaderBasedTestingFilter
from epp.plugins.inflight_load_producer import InFlightLoadProducer
from epp.plugins.label_selector_filter import LabelSelectorFilter
from epp.plugins.prefill_filter import PrefillFilter
from epp.plugins.utilization_detector import UtilizationDetector
from epp.plugins.utilization_filter import UtilizationFilter
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import FakeClock, context, endpoint, plugin, producer_counts, request

REQ = request()
ROLES = [
    "decode",
    "prefill",
    "encode",
    "encode-prefill",
    "prefill-decode",
    "both",
    "encode-prefill-decode",
    None,
    "x",
]


def by_role() -> list[Endpoint]:
    return [endpoint(str(role), labels={"llm-d.ai/role": role} if role else {}) for role in ROLES]


def kept(filter_plugin: object, candidates: list[Endpoint], req: object = REQ) -> list[str]:
    return [e.name for e in filter_plugin.filter(req, candidates)]  # type: ignore[attr-defined]


def test_role_filters_keep_llm_d_role_sets() -> None:
    assert kept(plugin(DecodeFilter), by_role()) == [
        "decode", "prefill-decode", "both", "encode-prefill-decode", "None",
    ]  # fmt: skip
    assert kept(plugin(PrefillFilter), by_role()) == [
        "prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode",
    ]  # fmt: skip
    assert kept(plugin(EncodeFilter), by_role()) == ["encode", "encode-prefill", "encode-prefill-decode"]


def test_role_filter_can_leave_nothing() -> None:
    assert kept(plugin(PrefillFilter), [endpoint("plain")]) == []


def labelled() -> list[Endpoint]:
    return [
        endpoint("a", labels={"tier": "gold", "zone": "x"}),
        endpoint("b", labels={"tier": "silver", "zone": "x"}),
        endpoint("c", labels={"zone": "y"}),
    ]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, ["a", "b", "c"]),
        ({"matchLabels": {"zone": "x"}}, ["a", "b"]),
        ({"matchLabels": {"zone": "x", "tier": "silver"}}, ["b"]),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold", "bronze"]}]}, ["a"]),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gold"]}]}, ["b", "c"]),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, ["a", "b"]),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, ["c"]),
        (
            {
                "matchLabels": {"zone": "x"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gold"]}],
            },
            ["b"],
        ),
    ],
)
def test_label_selector(selector: dict, expected: list[str]) -> None:
    assert kept(plugin(LabelSelectorFilter, selector), labelled()) == expected


@pytest.mark.parametrize(
    "expression",
    [
        {"key": "k", "operator": "In", "values": []},
        {"key": "k", "operator": "Exists", "values": ["v"]},
        {"key": "k", "operator": "Equals", "values": ["v"]},
    ],
)
def test_label_selector_rejects_malformed_requirements(expression: dict) -> None:
    with pytest.raises(ValidationError):
        LabelSelectorFilter.Params.model_validate({"matchExpressions": [expression]})


def test_by_label() -> None:
    strict = plugin(ByLabelFilter, {"label": "tier", "validValues": ["gold", "silver"]})
    assert kept(strict, labelled()) == ["a", "b"]
    lenient = plugin(ByLabelFilter, {"label": "tier", "validValues": ["gold"], "allowsNoLabel": True})
    assert kept(lenient, labelled()) == ["a", "c"]


def test_utilization_filter_drops_endpoints_over_any_limit() -> None:
    params = {
        "conditions": [
            {"metric": "waiting-queue", "maxValue": 4},
            {"metric": "kv-cache-utilization", "maxValue": 0.9},
            {"metric": "active-requests", "maxValue": 10},
            {"metric": "running-requests", "maxValue": 20},
        ]
    }
    candidates = [
        endpoint("ok", queue=4, kv=0.9, inflight=10, running=20),
        endpoint("queue", queue=5),
        endpoint("kv", kv=0.95),
        endpoint("active", inflight=11),
        endpoint("running", running=21),
    ]
    utilization_filter = plugin(UtilizationFilter, params)
    utilization_filter.load = producer_counts(candidates)
    assert kept(utilization_filter, candidates) == ["ok"]


def test_utilization_filter_reads_an_inflight_load_producer_only_for_active_requests() -> None:
    """As llm-d: only an `active-requests` condition makes the filter a consumer of InFlightLoad
    (so only then is a default inflight-load-producer created for it)."""
    base = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: utilization-filter\n"
    active = load_config(base + "  parameters: {conditions: [{metric: active-requests, maxValue: 2}]}\n")
    assert active.producer_bindings[("utilization-filter", "InFlightLoad")] == "inflight-load-producer"
    queue = load_config(base + "  parameters: {conditions: [{metric: waiting-queue, maxValue: 2}]}\n")
    assert "inflight-load-producer" not in queue.plugins


def test_utilization_filter_fallback_on_empty() -> None:
    conditions = [{"metric": "waiting-queue", "maxValue": 1}]
    busy = [endpoint("a", queue=5), endpoint("b", queue=7)]
    assert kept(plugin(UtilizationFilter, {"conditions": conditions}), busy) == []
    assert kept(plugin(UtilizationFilter, {"conditions": conditions, "fallbackOnEmpty": True}), busy) == [
        "a",
        "b",
    ]


def test_header_based_testing_filter() -> None:
    candidates = [
        endpoint("a", address="10.0.0.1", port=3000),
        endpoint("b", address="10.0.0.2", port=3000),
        endpoint("c", address="10.0.0.2", port=3002),
        endpoint("v6", address="fd00::1", port=3000),
    ]
    test_filter = plugin(HeaderBasedTestingFilter)

    def select(value: str | None) -> list[str]:
        headers = {} if value is None else {"test-epp-endpoint-selection": value}
        return kept(test_filter, candidates, request(headers=headers))

    assert select(None) == [] and select("  ") == []
    assert select("10.0.0.1") == ["a"]
    assert select("10.0.0.2:3000, 10.0.0.1:3000") == ["b", "a"]
    assert select("10.0.0.2") == ["c"]  # a bare IP selects the last endpoint with that IP
    assert select("10.0.0.2:3000,10.0.0.2:3002") == ["b"]  # one endpoint per IP, as GIE
    assert select("[fd00::1]:3000,10.9.9.9") == ["v6"]
    assert select("fd00::1") == ["v6"]
    assert select("10.0.0.1:9999") == []


# --- saturation detectors -------------------------------------------------------------------------

NOW = 1000.0


def utilization(params: dict | None = None) -> UtilizationDetector:
    return plugin(UtilizationDetector, params, context(clock=FakeClock(NOW)))


def fresh(name: str, **metrics: float) -> Endpoint:
    return endpoint(name, scraped_at=NOW - 0.05, **metrics)  # type: ignore[arg-type]


def test_utilization_saturation_is_the_mean_of_worst_ratios() -> None:
    detector = utilization()
    candidates = [fresh("a", queue=5, kv=0.2), fresh("b", queue=0, kv=0.4), fresh("c", queue=10, kv=0.0)]
    assert detector.saturation(candidates) == pytest.approx((1.0 + 0.5 + 2.0) / 3)


def test_utilization_stale_or_missing_metrics_count_as_saturated() -> None:
    detector = utilization()
    stale = endpoint("stale", scraped_at=NOW - 0.3)
    never = endpoint("never", scraped_at=0.0)
    assert detector.saturation([stale, never, fresh("idle")]) == pytest.approx(2 / 3)
    assert detector.saturation([]) == 1.0


def test_utilization_custom_thresholds() -> None:
    detector = utilization(
        {"queueDepthThreshold": 10, "kvCacheUtilThreshold": 0.5, "metricsStalenessThreshold": "1s"}
    )
    assert detector.saturation([endpoint("a", queue=5, kv=0.1, scraped_at=NOW - 0.9)]) == pytest.approx(0.5)


def test_utilization_filter_drops_stale_and_saturated_keeping_all_if_none_left() -> None:
    detector = utilization({"headroom": 0.2})
    candidates = [
        fresh("ok", queue=5, kv=0.95),  # below 5 * 1.2 and 0.8 * 1.2
        fresh("queue", queue=6),
        fresh("kv", kv=0.96),
        endpoint("stale", scraped_at=NOW - 1),
    ]
    assert kept(detector, candidates) == ["ok"]
    assert kept(detector, candidates[1:]) == ["queue", "kv", "stale"]


def test_utilization_detector_rejects_bad_thresholds() -> None:
    for bad in ({"kvCacheUtilThreshold": 1.5}, {"queueDepthThreshold": 0}, {"headroom": -0.1}):
        with pytest.raises(ValidationError):
            UtilizationDetector.Params.model_validate(bad)


def counted(detector: ConcurrencyDetector, candidates: list[Endpoint]) -> list[Endpoint]:
    """The candidates, their helper-set counts made the detector's producer's."""
    detector.load = producer_counts(candidates, detector.load)
    return candidates


def test_concurrency_detector_requests_mode() -> None:
    detector = plugin(ConcurrencyDetector, {"maxConcurrency": 10, "headroom": 0.2})
    a, b = endpoint("a", inflight=10), endpoint("b", inflight=0)
    assert detector.saturation(counted(detector, [a, b])) == pytest.approx(0.5)
    both = counted(detector, [endpoint("c", inflight=15), endpoint("d", inflight=15)])
    assert detector.saturation(both) == pytest.approx(1.5)
    assert detector.saturation([]) == 1.0
    under_and_at = counted(detector, [endpoint("under", inflight=11), endpoint("at", inflight=12)])
    assert kept(detector, under_and_at) == ["under"]
    assert kept(detector, under_and_at[1:]) == []


def test_concurrency_detector_tokens_mode() -> None:
    detector = plugin(ConcurrencyDetector, {"concurrencyMode": "tokens", "maxTokenConcurrency": 100})
    candidates = counted(detector, [endpoint("a", inflight_tokens=50, inflight=99), endpoint("b")])
    assert detector.saturation(candidates) == pytest.approx(0.25)


def test_concurrency_detector_rejects_unknown_mode() -> None:
    with pytest.raises(ValidationError, match="'requests', 'tokens' or 'hybrid'"):
        ConcurrencyDetector.Params.model_validate({"concurrencyMode": "magic"})


def test_concurrency_detector_hybrid_mode_as_llm_d() -> None:
    """The mean over endpoints of each one's larger ratio; an endpoint goes at either limit."""
    detector = plugin(
        ConcurrencyDetector,
        {"concurrencyMode": "hybrid", "maxConcurrency": 10, "maxTokenConcurrency": 100, "headroom": 0.15},
    )
    busy_requests = endpoint("r", inflight=8, inflight_tokens=10)  # max(0.8, 0.1)
    busy_tokens = endpoint("t", inflight=1, inflight_tokens=60)  # max(0.1, 0.6)
    counted(detector, [busy_requests, busy_tokens])
    assert detector.saturation([busy_requests, busy_tokens]) == pytest.approx(0.7)
    assert detector.saturation([]) == 1.0
    # limits: int(10 x 1.15) = 11 requests, int(100 x 1.15) = 114 tokens (llm-d truncates)
    candidates = [
        endpoint("ok", inflight=10, inflight_tokens=113),
        endpoint("requests", inflight=11, inflight_tokens=0),
        endpoint("tokens", inflight=0, inflight_tokens=114),
    ]
    counted(detector, candidates)
    assert kept(detector, candidates) == ["ok"]
    # two requests waiting to be placed, spread over the two endpoints
    assert detector.saturation_with([busy_requests, busy_tokens], 2, 0) == pytest.approx((0.9 + 0.6) / 2)


def test_concurrency_detector_counts_the_named_producers_load() -> None:
    """With inFlightLoadProducerName the counts are that producer's, its output estimates in."""
    config = load_config(
        """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: inflight-load-producer, name: plain}
- {type: inflight-load-producer, name: outputs, parameters: {addEstimatedOutputTokens: true}}
- type: concurrency-detector
  parameters: {concurrencyMode: tokens, maxTokenConcurrency: 100, inFlightLoadProducerName: outputs}
- type: utilization-filter
  parameters:
    conditions: [{metric: active-requests, maxValue: 1}]
    inFlightLoadProducerName: outputs
"""
    )
    plugins = build_components(config, PluginContext()).plugins
    detector, producer, flt = (
        plugins["concurrency-detector"],
        plugins["outputs"],
        plugins["utilization-filter"],
    )
    assert isinstance(detector, ConcurrencyDetector) and isinstance(producer, InFlightLoadProducer)
    e = endpoint("e", inflight_tokens=999, inflight=5)  # the director's counts: not read
    first, second = request("x" * 80), request("x" * 80)  # 20 prompt tokens, 30 estimated output
    result = SchedulingResult({"d": ProfileResult([e])}, "d")
    producer.pre_request(first, result)
    assert detector.saturation([e]) == pytest.approx(0.5)
    assert kept(flt, [e]) == ["e"]
    producer.pre_request(second, result)
    assert kept(flt, [e]) == []
    producer.response_complete(first, result, None)
    assert detector.saturation([e]) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"inFlightLoadProducerName names 'nobody'"):
        load_config(
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
            "plugins: [{type: concurrency-detector, parameters: {inFlightLoadProducerName: nobody}}]\n"
        )
