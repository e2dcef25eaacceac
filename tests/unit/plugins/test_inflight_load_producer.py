"""`inflight-load-producer` against llm-d router v0.10's semantics (pkg/epp/framework/plugins/
requestcontrol/dataproducer/inflightload): what is charged, to whom, and when it is freed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from epp.config.build import build_components
from epp.config.loader import load_config
from epp.datalayer.inflight import RequestLoad
from epp.datalayer.tokenize import TOKENIZED_PROMPT, TokenizedPrompt
from epp.datastore import Endpoint
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.plugins.inflight_load_producer import InFlightLoadProducer
from epp.requestcontrol import RESPONSE_EVENT_STREAM, SERVED_ENDPOINT
from epp.requests import InferenceRequest
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import context, endpoint, plugin, request

PROMPT = "x" * 800  # 200 tokens at 4 bytes a token


def producer(params: dict | None = None, metrics: EppMetrics | None = None) -> InFlightLoadProducer:
    ctx = context() if metrics is None else PluginContext(metrics)
    return plugin(InFlightLoadProducer, params, ctx)


def counts(p: InFlightLoadProducer, e: Endpoint) -> tuple[int, int]:
    return p.load.requests(e), p.load.tokens(e)


def routed(p: InFlightLoadProducer, req: InferenceRequest, **profiles: Endpoint) -> SchedulingResult:
    result = SchedulingResult(
        {name: ProfileResult([e]) for name, e in profiles.items()}, next(iter(profiles))
    )
    p.pre_request(req, result)
    return result


def first_chunk(
    p: InFlightLoadProducer, req: InferenceRequest, result: SchedulingResult, sse: bool = True
) -> None:
    req.attributes[RESPONSE_EVENT_STREAM] = sse
    p.response_streaming(req, result, b"data: {}\n\n")


def test_each_profile_charges_its_first_target_one_request_and_the_prompt() -> None:
    p = producer()
    decode, prefill, fallback = endpoint("decode"), endpoint("prefill"), endpoint("fallback")
    req = request(PROMPT)
    result = SchedulingResult(
        {"decode": ProfileResult([decode, fallback]), "prefill": ProfileResult([prefill]), "none": None},
        "decode",
    )
    p.pre_request(req, result)
    assert counts(p, decode) == counts(p, prefill) == (1, 200)
    assert counts(p, fallback) == (0, 0)  # only the primary target, as llm-d


def test_only_the_uncached_prompt_is_charged() -> None:
    """(indexed blocks - matched blocks) x block size, plus the tail past the indexed blocks."""
    p = producer()
    p.bind_producer(PREFIX_MATCH, "prefix")
    warm, cold = endpoint("warm"), endpoint("cold")
    req = request(PROMPT)
    req.attributes["prefix"] = PrefixMatch(list(range(12)), {warm: 10}, 16)
    routed(p, req, decode=warm)
    assert counts(p, warm) == (1, 2 * 16 + 8)
    req2 = request(PROMPT)
    req2.attributes["prefix"] = PrefixMatch(list(range(12)), {warm: 10}, 16)
    routed(p, req2, decode=cold)
    assert counts(p, cold) == (1, 200)


def test_the_prompt_length_is_the_token_producers_when_one_is_bound() -> None:
    p = producer()
    p.bind_producer(TOKENIZED_PROMPT, "tokens")
    req = request(PROMPT)
    req.attributes["tokens"] = TokenizedPrompt(list(range(57)), "local")
    e = endpoint("e")
    routed(p, req, decode=e)
    assert counts(p, e) == (1, 57)


def test_prepare_publishes_each_candidates_cost_of_this_request() -> None:
    p = producer({"addEstimatedOutputTokens": True})
    p.bind_producer(PREFIX_MATCH, "prefix")
    warm, cold = endpoint("warm"), endpoint("cold")
    req = request(PROMPT)
    req.attributes["prefix"] = PrefixMatch(list(range(12)), {warm: 12}, 16)
    p.prepare(req, [warm, cold])
    view = req.attributes[p.name]
    assert isinstance(view, RequestLoad)
    # the output estimate is from the whole prompt: 200 x 1.5
    assert (view.request_tokens(warm), view.request_tokens(cold)) == (8 + 300, 200 + 300)


@pytest.mark.parametrize(
    ("params", "prompt_bytes", "client_max", "expected"),
    [
        ({}, 400, None, 150),  # 100 x 1.5
        ({"outputRatio": 0.5}, 12, None, 2),  # 3 x 0.5 = 1.5: rounded half away from zero
        ({}, 400, 40, 40),  # the client's max_tokens
        ({"maxEstimatedOutputTokens": 90}, 400, 120, 90),  # the operator's cap
        ({"maxEstimatedOutputTokens": 0}, 400, None, 0),  # 0 is a cap, as in llm-d
        ({}, 0, None, 0),  # no prompt, no estimate
    ],
)
def test_output_estimate(params: dict, prompt_bytes: int, client_max: int | None, expected: int) -> None:
    p = producer({"addEstimatedOutputTokens": True, **params})
    req = request("x" * prompt_bytes)
    req.max_tokens = client_max
    e = endpoint("e")
    routed(p, req, decode=e)
    assert counts(p, e) == (1, prompt_bytes // 4 + expected)


@pytest.mark.parametrize("bad", [{"outputRatio": -0.1}, {"maxEstimatedOutputTokens": -1}])
def test_negative_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        InFlightLoadProducer.Params.model_validate(bad)


def test_first_sse_chunk_frees_the_prompt_and_the_end_the_request() -> None:
    p = producer()
    e = endpoint("e")
    req = request(PROMPT)
    result = routed(p, req, decode=e)
    first_chunk(p, req, result)
    assert counts(p, e) == (1, 0)
    first_chunk(p, req, result)  # later chunks change nothing
    assert counts(p, e) == (1, 0)
    p.response_complete(req, result, None)
    assert counts(p, e) == (0, 0)


def test_a_non_streamed_body_frees_everything_only_at_its_end() -> None:
    p = producer()
    e = endpoint("e")
    req = request(PROMPT)
    result = routed(p, req, decode=e)
    first_chunk(p, req, result, sse=False)
    assert counts(p, e) == (1, 200)
    p.response_complete(req, result, None)
    assert counts(p, e) == (0, 0)


def test_pd_first_chunk_frees_the_prefill_pick_whole() -> None:
    p = producer()
    decode, prefill = endpoint("decode"), endpoint("prefill")
    req = request(PROMPT)
    result = routed(p, req, decode=decode, prefill=prefill)
    first_chunk(p, req, result)
    assert counts(p, prefill) == (0, 0) and counts(p, decode) == (1, 0)
    p.response_complete(req, result, None)
    assert counts(p, decode) == (0, 0)


def test_with_output_estimates_only_the_prefill_pick_is_freed_at_the_first_chunk() -> None:
    p = producer({"addEstimatedOutputTokens": True})
    decode, prefill = endpoint("decode"), endpoint("prefill")
    req = request(PROMPT)
    result = routed(p, req, decode=decode, prefill=prefill)
    assert counts(p, decode) == (1, 500)
    first_chunk(p, req, result)
    assert counts(p, prefill) == (0, 0) and counts(p, decode) == (1, 500)
    p.response_complete(req, result, None)
    assert counts(p, decode) == (0, 0)


def test_completion_releases_exactly_once_and_never_below_zero() -> None:
    p = producer()
    e = endpoint("e")
    first, second = request(PROMPT), request("x" * 40)
    result = routed(p, first, decode=e)
    routed(p, second, decode=e)
    assert counts(p, e) == (2, 210)
    p.response_complete(first, result, None)
    p.response_complete(first, result, None)  # a second completion of the same request
    assert counts(p, e) == (1, 10)
    p.response_complete(request(PROMPT), result, None)  # one never charged
    assert counts(p, e) == (1, 10)


def test_a_retry_moves_the_primary_charge_to_the_endpoint_that_served_once() -> None:
    """Envoy retried on another endpoint: the primary profile's charge leaves the failed pick
    for the one serving (with the prompt it must compute), once; the prefill pick keeps its own."""
    metrics = EppMetrics()
    p = producer(metrics=metrics)
    primary, served, prefill = endpoint("primary"), endpoint("served"), endpoint("prefill")
    req = request(PROMPT)
    result = routed(p, req, decode=primary, prefill=prefill)
    req.attributes[SERVED_ENDPOINT] = served
    p.response_received(req, result)
    p.response_received(req, result)  # reported again: nothing moves twice
    assert (counts(p, primary), counts(p, served), counts(p, prefill)) == ((0, 0), (1, 200), (1, 200))
    samples = {
        s.labels["endpoint_name"]: s.value
        for family in metrics.registry.collect()
        if family.name == "llm_d_epp_inflight_requests"
        for s in family.samples
    }
    assert samples == {"served": 1, "prefill": 1}
    first_chunk(p, req, result)
    assert counts(p, served) == (1, 0)
    p.response_complete(req, result, None)
    p.response_complete(req, result, None)
    assert counts(p, primary) == counts(p, served) == counts(p, prefill) == (0, 0)


def test_a_retry_on_an_endpoint_outside_the_pool_releases_the_charge() -> None:
    p = producer()
    primary = endpoint("primary")
    req = request(PROMPT)
    result = routed(p, req, decode=primary)
    req.attributes[SERVED_ENDPOINT] = None
    p.response_received(req, result)
    assert counts(p, primary) == (0, 0)
    p.response_complete(req, result, None)
    assert counts(p, primary) == (0, 0)


def test_served_by_the_primary_pick_keeps_the_charge() -> None:
    p = producer()
    primary = endpoint("primary")
    req = request(PROMPT)
    result = routed(p, req, decode=primary)
    p.response_received(req, result)  # no report: Envoy without the served header
    req.attributes[SERVED_ENDPOINT] = primary
    p.response_received(req, result)
    assert counts(p, primary) == (1, 200)


def test_a_departed_endpoints_requests_release_into_its_old_counts() -> None:
    """An endpoint leaves and a new one takes its name: the old requests' releases do not touch
    the newcomer's counts (llm-d releases into the counter instance it incremented)."""
    p = producer()
    old = endpoint("pod")
    req = request(PROMPT)
    result = routed(p, req, decode=old)
    p.endpoint_removed(old)
    new = endpoint("pod")
    assert counts(p, new) == (0, 0)
    later = request("x" * 40)
    routed(p, later, decode=new)
    p.response_complete(req, result, None)
    assert counts(p, new) == (1, 10)


def test_gauges_follow_the_counts_by_endpoint_flow_and_priority() -> None:
    metrics = EppMetrics()
    p = producer(metrics=metrics)
    e = endpoint("e", namespace="ns")
    req = request(PROMPT)
    req.fairness_id, req.priority = "tenant", 2
    labels = {
        "endpoint_name": "e",
        "namespace": "ns",
        "producer_name": p.name,
        "fairness_id": "tenant",
        "priority": "2",
    }

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    result = routed(p, req, decode=e)
    assert (sample("llm_d_epp_inflight_requests"), sample("llm_d_epp_inflight_tokens")) == (1, 200)
    first_chunk(p, req, result)
    assert (sample("llm_d_epp_inflight_requests"), sample("llm_d_epp_inflight_tokens")) == (1, 0)
    p.response_complete(req, result, None)
    assert sample("llm_d_epp_inflight_requests") is None  # a series exists while above zero


CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
{plugins}
schedulingProfiles:
- {{name: default, plugins: [{{pluginRef: token-load-scorer}}]}}
"""


def test_prefix_match_info_is_optional_and_read_from_the_named_producer() -> None:
    alone = load_config(CONFIG.format(plugins="- {type: token-load-scorer}"))
    assert "approx-prefix-cache-producer" not in alone.plugins  # none is created for the discount
    assert alone.producer_bindings == {("token-load-scorer", "InFlightLoad"): "inflight-load-producer"}
    named = load_config(
        CONFIG.format(
            plugins="""\
- {type: approx-prefix-cache-producer, name: short, parameters: {blockSizeTokens: 16}}
- {type: approx-prefix-cache-producer, name: long, parameters: {blockSizeTokens: 64}}
- {type: inflight-load-producer, parameters: {prefixMatchInfoProducerName: long}}
- {type: token-load-scorer}"""
        )
    )
    assert named.producer_bindings[("inflight-load-producer", "PrefixCacheMatchInfo")] == "long"
    components = build_components(named, PluginContext())
    assert components.plugins["inflight-load-producer"].producers  # bound, so it runs after "long"


def test_a_consumers_prefix_parameter_does_not_configure_the_default_producer() -> None:
    config = load_config(
        CONFIG.format(
            plugins="""\
- {type: approx-prefix-cache-producer, name: a}
- {type: approx-prefix-cache-producer, name: b}
- type: prefix-cache-affinity-filter
  parameters: {prefixMatchInfoProducerName: b, maxTTFTPenaltyMs: 100}
- {type: token-load-scorer}"""
        )
    )
    implicit = config.plugins["inflight-load-producer"]
    assert implicit.implicit and implicit.params.prefix_match_info_producer_name == ""  # type: ignore[attr-defined]
    assert not any("ignored because inflight-load-producer" in w for w in config.warnings)
