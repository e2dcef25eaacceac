"""Where the loader is lenient as the Go EPPs are (plugin parameters, older names and shapes), each
leniency is a warning, and strict checking (`epp serve --strict-config`) turns them into errors."""

from __future__ import annotations

import pytest

from epp.config.build import build_components
from epp.config.loader import load_config
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.always_disagg_pd_decider import AlwaysDisaggPDDecider
from epp.plugins.disagg_profile_handler import DisaggProfileHandler
from epp.plugins.prefix_based_pd_decider import PrefixBasedPDDecider
from epp.scheduling.prefix.params import PrefixIndexParams

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
PROFILE = "schedulingProfiles:\n- name: d\n  plugins: [{pluginRef: p}]\n"


def prefix_config(parameters: str) -> str:
    return (
        HEADER + f"plugins:\n- name: p\n  type: prefix-cache-scorer\n  parameters: {parameters}\n" + PROFILE
    )


def test_unknown_plugin_parameter_is_a_warning_naming_the_closest_field() -> None:
    config = load_config(prefix_config("{blockSizeToken: 32, lruCapacityPerServer: 10}"))
    params = config.plugins["p"].params
    assert isinstance(params, PrefixIndexParams)
    assert params.lru_capacity_per_server == 10 and params.block_size_tokens == 16  # the typo is dropped
    (warning,) = config.warnings
    assert warning.startswith(
        "plugins[0].parameters: unknown field 'blockSizeToken' ignored; "
        "did you mean 'blockSizeTokens'? (known: "
    )


def test_strict_config_turns_warnings_into_errors() -> None:
    text = prefix_config("{blockSizeToken: 32}")
    with pytest.raises(ConfigError) as caught:
        load_config(text, strict=True)
    assert str(caught.value).startswith(
        "invalid EndpointPickerConfig: plugins[0].parameters.blockSizeToken: "
        "unknown field (allowed: autoTune, "
    )
    assert str(caught.value).endswith("did you mean 'blockSizeTokens'?")
    deprecated = prefix_config("{hashBlockSize: 64}")
    load_config(deprecated)
    with pytest.raises(
        ConfigError, match=r"hashBlockSize is deprecated: read as blockSize \(an error with strict"
    ):
        load_config(deprecated, strict=True)


def test_nested_unknown_parameters_are_warnings_too() -> None:
    text = (
        HEADER + "plugins:\n- type: disagg-profile-handler\n  parameters: {profiles: {dcode: x}}\n"
        "- {type: decode-filter}\n"
        "schedulingProfiles:\n- {name: decode, plugins: [{pluginRef: decode-filter}]}\n"
    )
    config = load_config(text)
    assert any(
        "unknown field 'dcode' in ProfileNames ignored; did you mean 'decode'?" in w for w in config.warnings
    )


def test_top_level_fields_stay_strict() -> None:
    with pytest.raises(
        ConfigError, match=r"schedulingProfile: unknown field .*did you mean 'schedulingProfiles'\?"
    ):
        load_config(HEADER + "schedulingProfile: []\n")


@pytest.mark.parametrize(
    ("parameters", "tokens", "warning"),
    [
        ("{hashBlockSize: 64}", 16, "hashBlockSize is deprecated: read as blockSize"),
        (
            "{blockSize: 128}",
            32,
            "blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 32",
        ),
        ("{blockSizeTokens: 8}", 8, None),
        ("{mode: estimate}", 16, "mode 'estimate' (llm-d <= v0.5) is deprecated"),
    ],
)
def test_prefix_block_size_renames(parameters: str, tokens: int, warning: str | None) -> None:
    config = load_config(prefix_config(parameters))
    params = config.plugins["p"].params
    assert isinstance(params, PrefixIndexParams) and params.configured_block_tokens() == tokens
    producer = config.plugins["approx-prefix-cache-producer"].params
    assert isinstance(producer, PrefixIndexParams) and producer.configured_block_tokens() == tokens
    if warning is None:
        assert not any("flowControl" in w for w in config.warnings)
    else:
        assert any(warning in w for w in config.warnings), config.warnings


def test_prefix_cache_tracking_mode_is_read_as_the_precise_scorer() -> None:
    config = load_config(prefix_config("{mode: cache_tracking}"))
    assert config.plugins["p"].type_name == "precise-prefix-cache-scorer"
    assert "mode cache_tracking (llm-d v0.2-v0.5) is deprecated" in config.warnings[0]


PD = (
    HEADER + "plugins:\n- {type: prefill-filter}\n- {type: decode-filter}\n"
    "- type: pd-profile-handler\n  parameters: {params}\n"
    "schedulingProfiles:\n- {name: prefill, plugins: [{pluginRef: prefill-filter}]}\n"
    "- {name: decode, plugins: [{pluginRef: decode-filter}]}\n"
)


def test_pd_handler_threshold_zero_is_an_always_disagg_decider() -> None:
    config = load_config(PD.replace("{params}", "{threshold: 0, hashBlockSize: 5, primaryPort: 8000}"))
    assert config.plugins["always-disagg-pd-decider"].implicit
    plugins = build_components(config, PluginContext()).plugins
    handler = plugins["pd-profile-handler"]
    assert isinstance(handler, DisaggProfileHandler) and isinstance(handler.decider, AlwaysDisaggPDDecider)
    text = "\n".join(config.warnings)
    assert "'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'" in text
    assert "threshold 0 (llm-d <= v0.5) is deprecated: read as decider always-disagg-pd-decider" in text
    assert "hashBlockSize (llm-d <= v0.5) is ignored" in text


def test_pd_handler_threshold_is_a_prefix_based_decider_in_tokens() -> None:
    config = load_config(PD.replace("{params}", "{threshold: 100}"))
    plugins = build_components(config, PluginContext()).plugins
    handler = plugins["pd-profile-handler"]
    assert isinstance(handler, DisaggProfileHandler)
    assert isinstance(handler.decider, PrefixBasedPDDecider) and handler.decider.non_cached_tokens == 25


def test_decider_plugin_name_is_a_deprecated_spelling() -> None:
    text = PD.replace("{params}", "{deciderPluginName: d}").replace(
        "- {type: decode-filter}\n", "- {type: decode-filter}\n- {name: d, type: always-disagg-pd-decider}\n"
    )
    config = load_config(text)
    assert any(
        "deciderPluginName is deprecated: read as prefillDeciderPluginName" in w for w in config.warnings
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("kv-cache-scorer", "kv-cache-utilization-scorer"),
        ("model-server-protocol-metrics", "core-metrics-extractor"),
    ],
)
def test_renamed_types_load_with_a_deprecation_warning(old: str, new: str) -> None:
    config = load_config(HEADER + f"plugins:\n- type: {old}\n")
    assert config.plugins[old].type_name == new
    assert f"plugins[0].type: '{old}' is a deprecated name of '{new}'" in config.warnings


def test_no_scheduling_profiles_is_gie_default_profile_of_every_configured_plugin() -> None:
    text = HEADER + "plugins:\n- type: decode-filter\n- type: queue-scorer\n- type: core-metrics-extractor\n"
    config = load_config(text)
    (profile,) = config.profiles
    assert (profile.name, profile.filters, profile.scorers) == (
        "default",
        ("decode-filter",),
        (("queue-scorer", 1.0),),
    )
    assert profile.picker == "max-score-picker" and config.profile_handler == "single-profile-handler"
    assert config.metrics_extractor == "core-metrics-extractor"
    assert config.warnings[0].startswith("schedulingProfiles: none given; profile 'default' runs every")


def test_request_handler_parsers_and_flow_control_saturation_detector() -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: passthrough-parser\n- type: openai-parser\n- type: queue-scorer\n"
        "- {name: sd, type: concurrency-detector}\n"
        "requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: passthrough-parser}]}\n"
        "parser: {pluginRef: openai-parser}\n"
        "flowControl: {saturationDetector: {pluginRef: sd}}\n"
        "saturationDetector: {queueDepthThreshold: 3}\n"
    )
    config = load_config(text)
    assert config.parsers == ("openai-parser", "passthrough-parser")
    assert config.saturation_detector == "sd"
    assert "parser is ignored because requestHandler.parsers is set (llm-d router)" in config.warnings
    assert (
        "saturationDetector is ignored because flowControl.saturationDetector is set (llm-d router)"
        in config.warnings
    )
    parsers = build_components(config, PluginContext()).parsers
    assert parsers.resolve("/v1/chat/completions").name == "openai-parser"
    assert parsers.resolve("/v1/messages").name == "passthrough-parser"


def test_flow_control_inline_thresholds_under_flow_control() -> None:
    config = load_config(
        HEADER
        + "plugins:\n- type: queue-scorer\nflowControl: {saturationDetector: {queueDepthThreshold: 3}}\n"
    )
    assert config.plugins[config.saturation_detector].params.model_dump()["queue_depth_threshold"] == 3


def test_test_only_feature_gate_and_types_say_so() -> None:
    with pytest.raises(ConfigError, match="'test-feature-gate' is a test-only gate"):
        load_config(HEADER + "featureGates: [test-feature-gate]\n")
    with pytest.raises(
        ConfigError, match=r"plugin type 'test-picker' is not available in this EPP \(a test-only"
    ):
        load_config(HEADER + "plugins: [{type: test-picker}]\n")


def test_pd_handler_without_a_decider_always_prefills_as_llm_d_v05_to_v08() -> None:
    config = load_config(PD.replace("{params}", "{}"))
    handler = build_components(config, PluginContext()).plugins["pd-profile-handler"]
    assert isinstance(handler, DisaggProfileHandler) and isinstance(handler.decider, AlwaysDisaggPDDecider)
    assert any("pd-profile-handler names no decider" in w for w in config.warnings)
    nested = load_config(PD.replace("{params}", "{}").replace("pd-profile-handler", "disagg-profile-handler"))
    handler = build_components(nested, PluginContext()).plugins["disagg-profile-handler"]
    assert isinstance(handler, DisaggProfileHandler) and handler.decider is None  # the current name: no P/D


def test_several_producers_and_no_name_read_from_the_default_producer_as_go() -> None:
    """llm-d's tiered prefix cache guide: two named producers, each read by its own scorer, and a
    no-hit-lru-scorer naming none, which the Go EPP serves from a default producer."""
    text = (
        HEADER + "plugins:\n- type: no-hit-lru-scorer\n"
        "- {type: approx-prefix-cache-producer, name: gpu}\n"
        "- {type: approx-prefix-cache-producer, name: cpu}\n"
        "- {type: prefix-cache-scorer, name: g, parameters: {prefixMatchInfoProducerName: gpu}}\n"
    )
    config = load_config(text)
    assert config.producer_bindings[("g", "PrefixCacheMatchInfo")] == "gpu"
    assert (
        config.producer_bindings[("no-hit-lru-scorer", "PrefixCacheMatchInfo")]
        == "approx-prefix-cache-producer"
    )
    assert config.plugins["approx-prefix-cache-producer"].implicit
    assert any(
        "reads PrefixCacheMatchInfo from a default approx-prefix-cache-producer" in w for w in config.warnings
    )
    named = text + "- {type: approx-prefix-cache-producer}\n"
    assert not load_config(named).plugins["approx-prefix-cache-producer"].implicit


def test_default_flow_control_policies_are_implied_and_gates_take_values() -> None:
    text = (
        HEADER + "plugins:\n- type: queue-scorer\nfeatureGates: [flowControl=true]\n"
        "flowControl:\n  priorityBands:\n  - {priority: 1, fairnessPolicyRef: global-strict-fairness-policy, "
        "orderingPolicyRef: fcfs-ordering-policy}\n  usageLimitPolicyPluginRef: static-usage-limit-policy\n"
    )
    config = load_config(text)
    assert config.feature_gates == frozenset({"flowControl"})
    assert config.flow_control_spec is not None and not any("flowControl" in w for w in config.warnings)
    with pytest.raises(ConfigError, match=r"fairnessPolicyRef: no plugin named 'no-such-fairness-policy'"):
        load_config(text.replace("global-strict-fairness-policy", "no-such-fairness-policy"))
    off = load_config(text.replace("flowControl=true", "flowControl=false"))
    assert "flowControl is ignored without the flowControl feature gate (as in GIE)" in off.warnings
    assert off.feature_gates == frozenset()


@pytest.mark.parametrize("value", ["off", "no", "maybe", ""])
def test_a_gate_value_go_cannot_read_as_a_boolean_is_refused(value: str) -> None:
    """llm-d reads `name=value` with strconv.ParseBool (1, t, true, 0, f, false, any case) and
    refuses to start on anything else. Any value but false, 0 and f turned the gate on here:
    `flowControl=off` switched flow control on."""
    with pytest.raises(ConfigError) as raised:
        load_config(HEADER + f"plugins:\n- type: queue-scorer\nfeatureGates: ['flowControl={value}']\n")
    assert (
        f"featureGates[0]: {value!r} is not a valid value for the feature gate 'flowControl' "
        "(true or false, as Go's strconv.ParseBool reads them: 1, t, true, 0, f, false, any case)"
    ) in str(raised.value)
    for on in ("TRUE", "t", "1", " True "):
        assert load_config(HEADER + f"featureGates: ['flowControl={on}']\n").feature_gates == {"flowControl"}
    for off in ("FALSE", "f", "0"):
        assert load_config(HEADER + f"featureGates: ['flowControl={off}']\n").feature_gates == frozenset()


def test_flow_control_saturation_detector_alone_needs_no_gate() -> None:
    config = load_config(
        HEADER
        + "plugins:\n- type: queue-scorer\nflowControl: {saturationDetector: {queueDepthThreshold: 2}}\n"
    )
    assert not any("flowControl" in w for w in config.warnings)


def test_plugins_that_are_not_filters_scorers_or_pickers_are_ignored_in_profiles_as_gie() -> None:
    text = (
        HEADER
        + "plugins:\n- type: single-profile-handler\n- type: queue-scorer\n"
        + (
            "schedulingProfiles: [{name: d, plugins: "
            "[{pluginRef: single-profile-handler}, {pluginRef: queue-scorer}]}]\n"
        )
    )
    config = load_config(text)
    assert config.profiles[0].scorers == (("queue-scorer", 1.0),) and config.profiles[0].filters == ()
    assert (
        "schedulingProfiles[0].plugins[0].pluginRef: plugin 'single-profile-handler' is a "
        "single-profile-handler, which is not a filter, scorer or picker: ignored in the profile (as GIE)"
        in config.warnings
    )


def test_a_plugin_is_every_role_it_implements_in_a_profile_as_gie() -> None:
    """Kthena's least-request filters and scores (bench/configs/kthena.yaml means both)."""
    text = (
        HEADER + "plugins:\n- {type: kthena-least-request, parameters: {maxWaitingRequests: 10}}\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: kthena-least-request, weight: 2}]}]\n"
    )
    (profile,) = load_config(text).profiles
    assert profile.filters == ("kthena-least-request",)
    assert profile.scorers == (("kthena-least-request", 2.0),)


def test_parsers_after_the_fallback_or_of_a_repeated_type_are_skipped_as_llm_d_router() -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: openai-parser\n- {type: openai-parser, name: again}\n- type: passthrough-parser\n"
        "- type: anthropic-parser\n- type: queue-scorer\n"
        "requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: again}, "
        "{pluginRef: passthrough-parser}, {pluginRef: anthropic-parser}]}\n"
    )
    config = load_config(text)
    assert config.parsers == ("openai-parser", "passthrough-parser")
    skipped = [w for w in config.warnings if w.startswith("requestHandler.parsers:")]
    assert [w.split("'")[1] for w in skipped] == ["again", "anthropic-parser"]
    parsers = build_components(config, PluginContext()).parsers
    assert parsers.resolve("/v1/messages").name == "passthrough-parser"


def test_numbers_with_an_exponent_read_as_go_reads_them() -> None:
    """`1e3`, `8e-1` and `1.5e3` are numbers to sigs.k8s.io/yaml (GIE's and llm-d's loaders) and to
    YAML 1.2, strings to PyYAML's YAML 1.1 rules: `weight: 1e3` was refused as not a number."""
    text = (
        HEADER
        + "plugins:\n- name: p\n  type: prefix-cache-scorer\n  parameters: {lruCapacityPerServer: 1e3}\n"
        + "- name: q\n  type: queue-scorer\n"
        + "schedulingProfiles:\n- name: d\n"
        + "  plugins: [{pluginRef: p, weight: 8e-1}, {pluginRef: q, weight: 1.5e3}]\n"
    )
    config = load_config(text)
    params = config.plugins["p"].params
    assert isinstance(params, PrefixIndexParams) and params.lru_capacity_per_server == 1000
    assert config.profiles[0].scorers == (("p", 0.8), ("q", 1500.0))
    assert load_config(text.replace("weight: 8e-1", "weight: 10.0")).profiles[0].scorers[0] == ("p", 10)
    with pytest.raises(ConfigError, match="lruCapacityPerServer: Input should be a valid integer"):
        load_config(text.replace("1e3}", '"1e3"}'))  # quoted, it is text, in Go too


def test_parsers_remember_each_path_s_parser_within_a_bound() -> None:
    """A path's parser is searched for once and remembered; a client's endless distinct paths
    (query strings) keep the memo bounded and still resolve by the longest suffix."""
    from epp.requestcontrol import hooks

    config = load_config(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
        "kind: EndpointPickerConfig\n"
        "plugins:\n"
        "- {name: openai-parser, type: openai-parser}\n"
        "- {name: passthrough-parser, type: passthrough-parser}\n"
        "requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: passthrough-parser}]}\n"
    )
    parsers = build_components(config, PluginContext()).parsers
    first = parsers.resolve("/v1/chat/completions")
    assert parsers._resolved == {"/v1/chat/completions": first}
    for i in range(hooks._MAX_RESOLVED_PATHS + 10):
        assert parsers.resolve(f"/v1/messages?n={i}").name == "passthrough-parser"
        assert parsers.resolve(f"/v1/completions?n={i}").name == "openai-parser"
        assert len(parsers._resolved) <= hooks._MAX_RESOLVED_PATHS
