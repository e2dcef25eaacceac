"""P/D configuration: llm-d's pd-epp-config samples load and build; disagg-profile-handler's nested
and legacy flat parameter forms; its decider reference is checked when the config is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config.build import build_components
from epp.config.loader import load_config, load_config_file
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.plugins.disagg_profile_handler import DisaggProfileHandler
from epp.plugins.prefix_based_pd_decider import PrefixBasedPDDecider

SAMPLES = Path(__file__).parents[3] / "epp" / "config" / "samples"

HANDLER_ONLY = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: decode-filter
- type: prefill-filter
- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 16}}
- {name: handler, type: HANDLER, parameters: PARAMS}
schedulingProfiles:
- {name: decode, plugins: [{pluginRef: decode-filter}]}
- {name: prefill, plugins: [{pluginRef: prefill-filter}]}
"""


def handler_config(params: str, handler: str = "disagg-profile-handler") -> DisaggProfileHandler:
    config = load_config(HANDLER_ONLY.replace("HANDLER", handler).replace("PARAMS", params))
    plugin = build_components(config, PluginContext()).plugins["handler"]
    assert isinstance(plugin, DisaggProfileHandler)
    return plugin


def error(params: str) -> str:
    with pytest.raises(ConfigError) as caught:
        handler_config(params)
    return str(caught.value)


@pytest.mark.parametrize(
    ("sample", "block_tokens", "auto_tune"),
    [("pd-epp-config.yaml", 16, True), ("sim-pd-epp-config.yaml", 16, False)],
)
def test_pd_samples_load_and_wire_the_decider_to_the_handler(
    sample: str, block_tokens: int, auto_tune: bool
) -> None:
    config = load_config_file(SAMPLES / sample)
    assert config.api_version == "llm-d.ai/v1alpha1" and not config.warnings
    assert {p.name: p.filters for p in config.profiles} == {
        "prefill": ("prefill-filter",),
        "decode": ("decode-filter",),
    }
    assert config.profile_handler == "disagg-profile-handler"
    assert config.producer_bindings[("prefix-based-pd-decider", "PrefixCacheMatchInfo")] == (
        "approx-prefix-cache-producer"
    )
    plugins = build_components(config, PluginContext()).plugins
    handler, decider = plugins["disagg-profile-handler"], plugins["prefix-based-pd-decider"]
    assert isinstance(handler, DisaggProfileHandler) and isinstance(decider, PrefixBasedPDDecider)
    assert handler.decider is decider and decider.non_cached_tokens == 16
    producer = plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, ApproxPrefixCacheProducer)
    assert producer.params.auto_tune is auto_tune
    assert producer.params.configured_block_tokens() == block_tokens
    assert producer.params.max_blocks(16) == 1024  # maxPrefixTokensToMatch 16,384 / 16


def test_nested_form_defaults() -> None:
    handler = handler_config("{}")
    assert (handler.decode_profile, handler.prefill_profile, handler.prefill_first) == (
        "decode",
        "prefill",
        False,
    )
    assert handler.decider is None


@pytest.mark.parametrize(
    ("order", "prefill_first"),
    [
        ("decode-first", False),
        ("Decode_First", False),
        ("decode", False),
        ("PREFILL-FIRST", True),
        ("prefill", True),
    ],
)
def test_stage_order_spellings(order: str, prefill_first: bool) -> None:
    assert handler_config(f"{{stageOrder: {order}}}").prefill_first is prefill_first


@pytest.mark.parametrize(
    "params",
    [
        "{prefillDeciderPluginName: prefix-based-pd-decider}",
        "{deciderPluginName: prefix-based-pd-decider, decodeProfile: decode, prefillProfile: prefill}",
        "{deciders: {prefill: prefix-based-pd-decider}, profiles: {decode: decode, prefill: prefill}}",
    ],
)
def test_legacy_flat_and_nested_forms_name_the_same_decider(params: str) -> None:
    handler = handler_config(params)
    assert isinstance(handler.decider, PrefixBasedPDDecider)


def test_the_legacy_alias_and_ignored_legacy_keys_load() -> None:
    text = HANDLER_ONLY.replace("HANDLER", "pd-profile-handler")
    config = load_config(text.replace("PARAMS", "{primaryPort: 8000, prefixPluginName: prefix-cache-scorer}"))
    handler = build_components(config, PluginContext()).plugins["handler"]
    assert handler.type_name == "disagg-profile-handler"
    assert any(
        w.endswith("prefixPluginName (llm-d <= v0.5: the prefix plugin of the old threshold logic) ignored")
        for w in config.warnings
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{stageOrder: sideways}", "stageOrder must be decode-first or prefill-first, got 'sideways'"),
        (
            "{stageOrder: decode-first, decodeProfile: d}",
            "use either the nested form (stageOrder) or the legacy flat keys (decodeProfile), not both",
        ),
        (
            "{deciderPluginName: a, prefillDeciderPluginName: b}",
            "deciderPluginName and prefillDeciderPluginName name different plugins",
        ),
        ("{deciders: {encode: x}}", "plugins[3].parameters.deciders.encode: no plugin named 'x'"),
        (
            "{deciders: {encode: prefix-based-pd-decider}}",
            "encode profile 'encode' is not among the scheduling profiles (decode, prefill)",
        ),
        ("{primaryPort: 0}", "plugins[3].parameters.primaryPort: Input should be greater than or equal to 1"),
        (
            "{stageOrder: prefill-first, deciders: {prefill: prefix-based-pd-decider}}",
            "a prefill decider needs stageOrder decode-first",
        ),
        ("{threshold: -1}", "plugins[3].parameters: threshold: expected a non-negative integer, got -1"),
    ],
)
def test_invalid_handler_parameters(params: str, message: str) -> None:
    assert message in error(params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            "{deciders: {prefill: nope}}",
            "plugins[3].parameters.deciders.prefill: no plugin named 'nope'",
        ),
        (
            "{deciderPluginName: decode-filter}",
            "plugins[3].parameters.deciderPluginName: plugin 'decode-filter' is a decode-filter, "
            "not a prefill decider",
        ),
    ],
)
def test_the_decider_reference_is_checked_when_loading(params: str, message: str) -> None:
    assert message in error(params)


def test_decider_parameters_must_not_be_negative() -> None:
    config = HANDLER_ONLY.replace("nonCachedTokens: 16", "nonCachedTokens: -1")
    with pytest.raises(
        ConfigError, match=r"plugins\[2\].parameters.nonCachedTokens: Input should be greater"
    ):
        load_config(config.replace("HANDLER", "disagg-profile-handler").replace("PARAMS", "{}"))


def test_a_misnamed_decode_profile_is_a_load_error() -> None:
    message = error("{profiles: {decode: decoding}}")
    assert (
        "plugins: 'handler': decode profile 'decoding' is not among the scheduling profiles (decode, prefill)"
        in (message)
    )


def test_a_misnamed_prefill_profile_is_a_load_error_when_prefill_can_happen() -> None:
    message = error("{profiles: {prefill: prefil}, deciders: {prefill: prefix-based-pd-decider}}")
    assert "prefill profile 'prefil' is not among the scheduling profiles (decode, prefill)" in message
    # Without a decider P/D is off by design, so the prefill profile's name does not matter.
    handler_config("{profiles: {prefill: prefil}}")
