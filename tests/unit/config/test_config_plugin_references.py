"""Plugins that use other plugins by name (the shape of llm-d's disagg-profile-handler and its
deciders): references are checked at load time and the instances handed over at build time, and a
multi-profile handler can run decode then prefill and pass the prefill pick as a request header."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pytest

from epp.config.build import build_components
from epp.config.loader import load_config
from epp.config.strict import ConfigError
from epp.datastore import Endpoint, EndpointSpec
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.framework import (
    DataConsumer,
    Plugin,
    PluginContext,
    PluginParams,
    PluginReference,
    PluginUser,
    ProfileHandler,
    register,
)
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.types import ProfileResult, SchedulingResult


@register
class UncachedPromptDecider(Plugin, DataConsumer):
    """Disaggregate when at least 512 prompt tokens are not cached on the decode pick (llm-d's
    prefix-based-pd-decider arithmetic, with nonCachedTokens 512)."""

    type_name = "test-uncached-prompt-decider"
    consumes = {PREFIX_MATCH: ""}

    def disaggregate(self, request: InferenceRequest, decode: Endpoint) -> bool:
        match = self.consumed(request, PREFIX_MATCH)
        assert isinstance(match, PrefixMatch)
        return request.prompt_tokens - match.cached_tokens(decode) >= 512


class DeciderHandlerParams(PluginParams):
    decider: str


@register
class DecodeFirstHandler(Plugin, ProfileHandler, PluginUser):
    type_name = "test-decode-first-handler"
    Params = DeciderHandlerParams

    def __init__(self, name: str, params: DeciderHandlerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.decider_name = params.decider
        self.decider: UncachedPromptDecider | None = None

    @classmethod
    def referenced_plugins(cls, params: Any) -> list[PluginReference]:
        return [
            PluginReference("decider", params.decider, UncachedPromptDecider, "an uncached-prompt decider")
        ]

    def use_plugins(self, plugins: Mapping[str, Plugin]) -> None:
        decider = plugins[self.decider_name]
        assert isinstance(decider, UncachedPromptDecider)
        self.decider = decider

    def pick_profiles(
        self, request: InferenceRequest, profiles: Sequence[str], results: Mapping[str, ProfileResult | None]
    ) -> Sequence[str]:
        if "decode" not in results:
            return ["decode"]
        decode = results["decode"]
        if decode is None or "prefill" in results:
            return []
        assert self.decider is not None
        return ["prefill"] if self.decider.disaggregate(request, decode.targets[0]) else []

    def process_results(
        self, request: InferenceRequest, results: Mapping[str, ProfileResult | None]
    ) -> SchedulingResult:
        result = SchedulingResult(dict(results), "decode")
        prefill = results.get("prefill")
        if prefill is not None:
            result.headers["x-prefiller-host-port"] = prefill.targets[0].hostport
        return result


CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: decode-filter
- type: prefill-filter
- type: prefix-cache-scorer
- {name: decider, type: test-uncached-prompt-decider}
- {name: handler, type: test-decode-first-handler, parameters: {decider: DECIDER}}
schedulingProfiles:
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer}]}
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer}]}
"""


def pod(name: str, role: str, address: str) -> Endpoint:
    labels = MappingProxyType({"llm-d.ai/role": role})
    return Endpoint(EndpointSpec(name=name, address=address, port=8000, labels=labels))


def test_decode_then_prefill_with_a_referenced_decider() -> None:
    config = load_config(CONFIG.replace("DECIDER", "decider"))
    assert config.producer_bindings[("decider", "PrefixCacheMatchInfo")] == "approx-prefix-cache-producer"
    scheduler = build_components(config, PluginContext()).scheduler
    decode, prefill = pod("d", "decode", "10.0.0.1"), pod("p", "prefill", "10.0.0.2")

    def route() -> SchedulingResult:
        request = InferenceRequest("r", ApiKind.COMPLETIONS, "/v1/completions", "m", prompt=b"p" * 4096)
        result = scheduler.schedule(request, [decode, prefill])
        scheduler.pre_request(request, result)
        return result

    cold = route()
    assert cold.targets == [decode] and cold.headers == {"x-prefiller-host-port": "10.0.0.2:8000"}
    assert [e.name for e in cold.first_targets()] == ["d", "p"]
    warm = route()  # the prompt is now indexed on the decode pod: no remote prefill
    assert warm.targets == [decode] and warm.headers == {} and "prefill" not in warm.profile_results


@pytest.mark.parametrize(
    ("decider", "message"),
    [
        ("nope", "no plugin named 'nope'"),
        ("decode-filter", "plugin 'decode-filter' is a decode-filter, not an uncached-prompt decider"),
    ],
)
def test_references_are_checked_when_loading(decider: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIG.replace("DECIDER", decider))
    assert str(caught.value).startswith(
        f"invalid EndpointPickerConfig: plugins[4].parameters.decider: {message}"
    )
