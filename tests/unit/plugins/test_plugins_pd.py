"""Prefill/decode disaggregation (llm-d.md 1.2-1.6): the deciders' arithmetic, and the
disagg-profile-handler driving real decode and prefill profiles built from a config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest

from epp.config.build import EndpointPickerComponents, build_components
from epp.config.loader import load_config
from epp.datastore import Endpoint
from epp.metrics.exporter import EppMetrics
from epp.plugins.always_disagg_multimodal_decider import AlwaysDisaggMultimodalDecider
from epp.plugins.always_disagg_pd_decider import AlwaysDisaggPDDecider
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.plugins.prefix_based_pd_decider import PrefixBasedPDDecider
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult
from tests.unit.plugin_helpers import context, endpoint, plugin, request

LONG = b"x" * 4096  # 1,024 estimated tokens, 64 blocks of 16 tokens
ROLE = "llm-d.ai/role"


# --- prefix-based-pd-decider ----------------------------------------------------------------------


def decider_with_match(params: dict[str, int], cached_blocks: int, prompt: InferenceRequest) -> bool:
    decider = plugin(PrefixBasedPDDecider, params)
    decider.bind_producer(PREFIX_MATCH, "producer")
    decode = endpoint("d")
    prompt.attributes["producer"] = PrefixMatch([1] * 64, {decode: cached_blocks}, 16)
    return decider.disaggregate(prompt, decode)


@pytest.mark.parametrize(
    ("cached_blocks", "expected"),
    [
        (0, True),
        (63, True),  # 1,024 - 1,008 = 16 uncached: equality disaggregates
        (64, False),  # 1,024 - 1,024 = 0
    ],
)
def test_prefix_decider_compares_uncached_tokens_on_the_decode_endpoint(
    cached_blocks: int, expected: bool
) -> None:
    assert decider_with_match({"nonCachedTokens": 16}, cached_blocks, request(LONG)) is expected


def test_prefix_decider_one_token_below_the_threshold_stays_decode_only() -> None:
    prompt = request(b"x" * (1024 * 4 - 4))  # 1,023 tokens, 63 blocks cached = 1,008: 15 uncached
    assert decider_with_match({"nonCachedTokens": 16}, 63, prompt) is False


def test_non_cached_tokens_zero_disables_the_decider() -> None:
    assert decider_with_match({}, 0, request(LONG)) is False
    assert decider_with_match({"nonCachedTokens": 0, "promptTokens": 1}, 0, request(LONG)) is False


def test_short_prompts_stay_on_the_decode_pod() -> None:
    # promptTokens gates on the whole prompt; a prompt shorter than nonCachedTokens never qualifies
    assert decider_with_match({"nonCachedTokens": 16, "promptTokens": 1025}, 0, request(LONG)) is False
    assert decider_with_match({"nonCachedTokens": 16, "promptTokens": 1024}, 0, request(LONG)) is True
    assert decider_with_match({"nonCachedTokens": 1025}, 0, request(LONG)) is False


def test_token_id_prompts_count_their_ids() -> None:
    ids = list(range(100))
    assert decider_with_match({"nonCachedTokens": 100}, 0, request(token_ids=ids)) is True
    assert decider_with_match({"nonCachedTokens": 101}, 0, request(token_ids=ids)) is False


def test_prefix_decider_without_match_data_does_not_disaggregate() -> None:
    decider = plugin(PrefixBasedPDDecider, {"nonCachedTokens": 16})
    assert decider.disaggregate(request(LONG), endpoint("d")) is False


def test_always_and_multimodal_deciders() -> None:
    assert plugin(AlwaysDisaggPDDecider).disaggregate(request(), endpoint("d")) is True
    multimodal = plugin(AlwaysDisaggMultimodalDecider)

    def chat(*content: object) -> InferenceRequest:
        body = {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": list(content)},
            ]
        }
        return InferenceRequest("r", ApiKind.CHAT, "/v1/chat/completions", "m", body=body)

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    text = {"type": "text", "text": "what is this?"}
    assert multimodal.disaggregate(chat(text, image), endpoint("d")) is True
    assert multimodal.disaggregate(chat(audio), endpoint("d")) is True
    assert multimodal.disaggregate(chat(text), endpoint("d")) is False
    assert multimodal.disaggregate(request(LONG), endpoint("d")) is False


# --- disagg-profile-handler through the scheduler ---------------------------------------------------

PD_CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 16}}
- type: always-disagg-pd-decider
- {type: HANDLER, parameters: PARAMS}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer, weight: 2}, pluginRef: queue-scorer]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer, weight: 2}, pluginRef: queue-scorer]
"""
PREFIX_DECIDER = "{deciders: {prefill: prefix-based-pd-decider}}"


def scheduler(
    params: str = PREFIX_DECIDER, handler: str = "disagg-profile-handler", metrics: EppMetrics | None = None
) -> EndpointPickerComponents:
    config = load_config(PD_CONFIG.replace("HANDLER", handler).replace("PARAMS", params))
    return build_components(config, context(metrics=metrics))


def pod(name: str, role: str | None, address: str) -> Endpoint:
    return endpoint(name, address=address, labels={ROLE: role} if role else None)


DECODE, DECODE2 = pod("d1", "decode", "10.0.0.1"), pod("d2", "decode", "10.0.0.2")
PREFILL, PREFILL2 = pod("p1", "prefill", "10.0.1.1"), pod("p2", "prefill", "10.0.1.2")
POOL = [DECODE, PREFILL]


def route(sched: EndpointPickerComponents, prompt: bytes, pool: list[Endpoint]) -> SchedulingResult:
    req = request(prompt)
    result = sched.scheduler.schedule(req, pool)
    sched.hooks.pre_request(req, result)
    return result


def decisions(metrics: EppMetrics, decision: str, name: str = "disagg-profile-handler") -> float | None:
    labels = {
        "plugin_name": name,
        "plugin_type": "disagg-profile-handler",
        "model_name": "m",
        "decision_type": decision,
    }
    return metrics.registry.get_sample_value("llm_d_epp_pd_decision_total", labels)


def test_uncached_prompt_goes_prefill_then_decode_and_cached_prompt_stays_on_decode() -> None:
    metrics = EppMetrics()
    sched = scheduler(metrics=metrics)
    cold = route(sched, LONG, POOL)
    assert cold.primary_profile == "decode" and cold.targets == [DECODE]
    assert cold.headers == {"x-prefiller-host-port": "10.0.1.1:8000"}
    assert [e.name for e in cold.first_targets()] == ["d1", "p1"]  # both carry the request's load
    warm = route(sched, LONG, POOL)  # the prompt is now indexed on the decode pod
    assert warm.targets == [DECODE] and warm.headers == {}
    assert set(warm.profile_results) == {"decode"}
    assert decisions(metrics, "prefill-decode") == 1 and decisions(metrics, "decode-only") == 1
    samples = {"plugin_name": "disagg-profile-handler", "plugin_type": "disagg-profile-handler"}
    disagg = metrics.registry.get_sample_value(
        "llm_d_epp_disagg_decision_total", {**samples, "model_name": "m", "decision_type": "prefill-decode"}
    )
    assert disagg == 1


def test_the_decider_judges_the_chosen_decode_endpoint() -> None:
    sched = scheduler()
    route(sched, LONG, [DECODE, PREFILL])  # indexed on d1 (and p1)
    elsewhere = route(sched, LONG, [DECODE2, PREFILL])  # d2 holds nothing of it
    assert elsewhere.targets == [DECODE2] and elsewhere.headers == {"x-prefiller-host-port": "10.0.1.1:8000"}


def test_the_prefix_index_records_the_prompt_on_the_decode_and_the_prefill_pick() -> None:
    sched = scheduler()
    route(sched, LONG, [DECODE, PREFILL])
    producer = next(p for p in sched.plugins.values() if isinstance(p, ApproxPrefixCacheProducer))
    probe = request(LONG)
    producer.prepare(probe, [DECODE, PREFILL, PREFILL2])
    match = probe.attributes[producer.name]
    assert match.matched == {DECODE: 64, PREFILL: 64}
    # A longer prompt sharing that prefix: its prefill goes where the prefix already is.
    again = route(sched, LONG + b"y" * 400, [DECODE2, PREFILL2, PREFILL])
    assert again.targets == [DECODE2] and again.headers == {"x-prefiller-host-port": "10.0.1.1:8000"}


def test_short_prompts_and_embeddings_stay_decode_only() -> None:
    sched = scheduler()
    assert route(sched, b"hello there", POOL).headers == {}
    embedding = replace(request(LONG), api=ApiKind.EMBEDDINGS, path="/v1/embeddings")
    assert sched.scheduler.schedule(embedding, POOL).headers == {}


@pytest.mark.parametrize("params", [PREFIX_DECIDER, "{stageOrder: prefill-first}"])
def test_requests_for_several_sequences_stay_decode_only(params: str) -> None:
    """A remote prefill hands over one sequence's KV blocks: n > 1 or a list of prompts went to the
    prefiller, which refuses them (400 through the sidecar) where decode-only serves them."""
    sched = scheduler(params)
    for body in ({"n": 2}, {"n": 3.0}, {"prompt": ["a", "b"]}, {"prompt": [[1, 2], [3]]}):
        assert sched.scheduler.schedule(replace(request(LONG), body=body), POOL).headers == {}, body
    for body in ({"n": 1}, {"prompt": [1, 2, 3]}, {"prompt": ["one"]}):
        headers = sched.scheduler.schedule(replace(request(LONG), body=body), POOL).headers
        assert set(headers) == {"x-prefiller-host-port"}, body


@pytest.mark.parametrize("params", [PREFIX_DECIDER, "{stageOrder: prefill-first}"])
def test_a_responses_continuation_stays_decode_only(params: str) -> None:
    """vLLM keeps a stored response (and a conversation) in the process that answered it: a
    prefiller cannot build a follow-up's prompt and answers 404 "Response with id ... not found",
    which llm-d's sidecar relays to the client (ours now prefills such a request locally). So the
    prefill pod is not picked, and not charged for a request it never sees."""
    sched = scheduler(params)
    responses = replace(request(LONG), api=ApiKind.RESPONSES, path="/v1/responses")
    for body in (
        {"previous_response_id": "resp_1"},
        {"conversation": "conv_1"},
        {"conversation": {"id": "c"}},
    ):
        assert sched.scheduler.schedule(replace(responses, body=body), POOL).headers == {}, body
    for body in ({}, {"previous_response_id": None}, {"conversation": None}):
        headers = sched.scheduler.schedule(replace(responses, body=body), POOL).headers
        assert set(headers) == {"x-prefiller-host-port"}, body


def test_a_failed_prefill_profile_degrades_to_decode_only() -> None:
    metrics = EppMetrics()
    result = route(scheduler(metrics=metrics), LONG, [DECODE])  # no prefill pod at all
    assert result.targets == [DECODE] and result.headers == {}
    assert set(result.profile_results) == {"decode"}  # the failed prefill run is left out
    assert decisions(metrics, "decode-only") == 1


def test_no_decode_endpoint_is_an_error() -> None:
    with pytest.raises(SchedulingError, match="failed to find available decode workers"):
        scheduler().scheduler.schedule(request(LONG), [PREFILL, PREFILL2])


def test_unlabelled_pods_decode_and_a_both_pod_never_prefills_for_itself() -> None:
    plain = pod("u", None, "10.0.0.9")
    assert route(scheduler(), LONG, [plain, PREFILL]).targets == [plain]
    both = pod("b", "both", "10.0.0.8")
    result = route(scheduler("{deciders: {prefill: always-disagg-pd-decider}}"), LONG, [both])
    assert result.targets == [both] and result.headers == {}


def test_ipv6_prefill_endpoints_are_bracketed() -> None:
    v6 = pod("p6", "prefill", "fd00::5")
    result = route(scheduler(), LONG, [DECODE, v6])
    assert result.headers == {"x-prefiller-host-port": "[fd00::5]:8000"}


def test_without_a_decider_pd_is_off() -> None:
    result = route(scheduler("{}"), LONG, POOL)
    assert result.targets == [DECODE] and result.headers == {}


def test_prefill_first_runs_prefill_then_decode_without_a_decider(monkeypatch: pytest.MonkeyPatch) -> None:
    sched = scheduler("{stageOrder: prefill-first}")
    rounds: list[list[str]] = []
    pick = sched.scheduler.handler.pick_profiles

    def recording(
        req: InferenceRequest, profiles: Sequence[str], results: Mapping[str, ProfileResult | None]
    ) -> Sequence[str]:
        rounds.append(list(pick(req, profiles, results)))
        return rounds[-1]

    monkeypatch.setattr(sched.scheduler.handler, "pick_profiles", recording)
    result = route(sched, b"hi", POOL)  # even a short prompt: prefill-first has no decider
    assert rounds == [["prefill"], ["decode"], []]
    assert result.targets == [DECODE] and result.headers == {"x-prefiller-host-port": "10.0.1.1:8000"}


def test_legacy_pd_profile_handler_with_flat_keys_and_renamed_profiles() -> None:
    config = PD_CONFIG.replace("name: prefill\n", "name: p\n").replace("name: decode\n", "name: d\n")
    params = "{decodeProfile: d, prefillProfile: p, deciderPluginName: always-disagg-pd-decider}"
    built = load_config(config.replace("HANDLER", "pd-profile-handler").replace("PARAMS", params))
    sched = build_components(built, context())
    result = route(sched, b"hi", POOL)
    assert result.primary_profile == "d" and result.headers == {"x-prefiller-host-port": "10.0.1.1:8000"}
    assert set(result.profile_results) == {"d", "p"}


# --- E/P/D: the encode stage -----------------------------------------------------------------------

EPD_CONFIG = (
    PD_CONFIG.replace(
        "- type: always-disagg-pd-decider\n",
        "- type: always-disagg-pd-decider\n- type: always-disagg-multimodal-decider\n- type: encode-filter\n",
    )
    + "- name: encode\n  plugins: [{pluginRef: encode-filter}, pluginRef: queue-scorer]\n"
)
ENCODE, ENCODE2 = pod("e1", "encode", "10.0.2.1"), pod("e2", "encode", "10.0.2.2")  # queue-scored
EPD_POOL = [DECODE, PREFILL, ENCODE]


def media_chat() -> InferenceRequest:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, image]}]}
    return InferenceRequest("r", ApiKind.CHAT, "/v1/chat/completions", "m", body=body, prompt=b"x" * 400)


def epd(params: str, metrics: EppMetrics | None = None) -> EndpointPickerComponents:
    config = load_config(EPD_CONFIG.replace("HANDLER", "disagg-profile-handler").replace("PARAMS", params))
    return build_components(config, context(metrics=metrics))


def recorded_rounds(sched: EndpointPickerComponents, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    rounds: list[list[str]] = []
    pick = sched.scheduler.handler.pick_profiles

    def recording(
        req: InferenceRequest, profiles: Sequence[str], results: Mapping[str, ProfileResult | None]
    ) -> Sequence[str]:
        rounds.append(list(pick(req, profiles, results)))
        return rounds[-1]

    monkeypatch.setattr(sched.scheduler.handler, "pick_profiles", recording)
    return rounds


def test_decode_first_encodes_media_requests_before_deciding_prefill(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = EppMetrics()
    sched = epd(
        "{deciders: {prefill: always-disagg-pd-decider, encode: always-disagg-multimodal-decider}}", metrics
    )
    rounds = recorded_rounds(sched, monkeypatch)
    busy_encoder = endpoint("e1", address="10.0.2.1", labels={ROLE: "encode"}, queue=5)
    result = sched.scheduler.schedule(media_chat(), [DECODE, PREFILL, busy_encoder, ENCODE2])
    assert rounds == [["decode"], ["encode"], ["prefill"], []]
    assert result.targets == [DECODE] and set(result.profile_results) == {"decode", "prefill", "encode"}
    assert result.headers == {
        "x-prefiller-host-port": "10.0.1.1:8000",
        "x-encoder-hosts-ports": "10.0.2.2:8000",
    }
    rounds.clear()
    text_only = route(sched, LONG, EPD_POOL)  # no media: the encode decider says no, once
    assert rounds == [["decode"], ["prefill"], []]
    assert "x-encoder-hosts-ports" not in text_only.headers and "encode" not in text_only.profile_results
    assert decisions(metrics, "encode-prefill-decode") == 1 and decisions(metrics, "prefill-decode") == 1


def test_encode_only_decision_and_encoder_headers_by_the_headers_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = EppMetrics()
    sched = epd("{deciders: {encode: always-disagg-multimodal-decider}}", metrics)
    result = sched.scheduler.schedule(media_chat(), EPD_POOL)
    assert result.headers == {"x-encoder-hosts-ports": "10.0.2.1:8000"}
    assert decisions(metrics, "encode-decode") == 1


def test_prefill_first_asks_the_encode_decider_without_a_decode_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sched = epd("{stageOrder: prefill-first, deciders: {encode: always-disagg-multimodal-decider}}")
    rounds = recorded_rounds(sched, monkeypatch)
    result = sched.scheduler.schedule(media_chat(), EPD_POOL)
    assert rounds == [["prefill"], ["encode"], ["decode"], []]
    assert result.headers == {
        "x-prefiller-host-port": "10.0.1.1:8000",
        "x-encoder-hosts-ports": "10.0.2.1:8000",
    }
    assert plugin(PrefixBasedPDDecider, {"nonCachedTokens": 1}).disaggregate(media_chat(), None) is False


def test_pd_profile_handler_primary_port_routes_the_decode_rank_through_it() -> None:
    params = "{primaryPort: 8000, deciderPluginName: always-disagg-pd-decider}"
    built = load_config(PD_CONFIG.replace("HANDLER", "pd-profile-handler").replace("PARAMS", params))
    sched = build_components(built, context())
    rank = pod("d1-rank1", "decode", "10.0.0.1")
    rank = Endpoint(replace(rank.spec, port=8001))
    result = route(sched, b"hi", [rank, PREFILL])
    assert result.destination == "10.0.0.1:8000"
    assert result.headers == {
        "x-prefiller-host-port": "10.0.1.1:8000",
        "x-data-parallel-host-port": "10.0.0.1:8001",
    }
