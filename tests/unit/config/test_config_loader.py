"""EndpointPickerConfig loading: the sample configs, GIE's system defaults, strict validation with
exact messages, and building live components from a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from epp.config.build import build_components
from epp.config.loader import load_config, load_config_file
from epp.datalayer.engines import BUILTIN_ENGINES
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.concurrency_detector import ConcurrencyDetector
from epp.plugins.utilization_detector import UtilizationDetector

SAMPLES = Path(__file__).parents[3] / "epp" / "config" / "samples"
HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
ONE_PROFILE = "schedulingProfiles:\n- name: d\n  plugins: [{pluginRef: queue-scorer}]\n"
QUEUE = "plugins:\n- type: queue-scorer\n"


def cfg(*lines: str) -> str:
    return HEADER + "\n".join(lines) + "\n"


def error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    return str(caught.value)


def test_no_config_is_gie_default_profile_with_system_defaults() -> None:
    config = load_config()
    (profile,) = config.profiles
    assert profile.name == "default"
    assert profile.scorers == (
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    )
    assert profile.filters == () and profile.picker == "max-score-picker"
    assert config.profile_handler == "single-profile-handler"
    assert config.saturation_detector == "utilization-detector"
    assert (config.metrics_source, config.metrics_extractor) == (
        "metrics-data-source",
        "core-metrics-extractor",
    )
    assert config.producer_bindings == {
        ("prefix-cache-scorer", "PrefixCacheMatchInfo"): "approx-prefix-cache-producer"
    }
    implicit = {name for name, spec in config.plugins.items() if spec.implicit}
    assert implicit == {
        "max-score-picker",
        "single-profile-handler",
        "utilization-detector",
        "approx-prefix-cache-producer",
        "openai-parser",
    }
    assert config.parser == "openai-parser" and config.warnings == ()


def test_llm_d_epp_config_sample() -> None:
    config = load_config_file(SAMPLES / "llm-d-epp-config.yaml")
    assert config.api_version == "llm-d.ai/v1alpha1"
    (profile,) = config.profiles
    assert profile.filters == ("decode-filter",)
    assert profile.scorers == (("prefix-cache-scorer", 2.0),)
    assert profile.picker == "max-score-picker" and not config.plugins["max-score-picker"].implicit
    assert not config.plugins["single-profile-handler"].implicit


def test_gie_v1_3_sample_legacy_shapes() -> None:
    config = load_config_file(SAMPLES / "gie-v1.3-plugins.yaml")
    detector = config.plugins[config.saturation_detector]
    assert detector.implicit and detector.params.model_dump() == {
        "queue_depth_threshold": 8,
        "kv_cache_util_threshold": 0.9,
        "metrics_staleness_threshold": 0.5,
        "headroom": 0.0,
    }
    assert config.plugins["extractor"].type_name == "core-metrics-extractor"
    assert (config.metrics_source, config.metrics_extractor) == ("metrics", "extractor")
    producer = config.plugins["approx-prefix-cache-producer"]
    assert producer.implicit
    assert producer.params.configured_block_tokens() == 32  # type: ignore[attr-defined]
    assert producer.params.lru_capacity_per_server == 20000  # type: ignore[attr-defined]
    assert producer.params.max_prefix_blocks_to_match == 512  # type: ignore[attr-defined]


def test_load_and_affinity_sample_builds_and_schedules() -> None:
    config = load_config_file(SAMPLES / "load-and-affinity.yaml")
    assert config.producer_bindings == {
        ("prefix-cache-scorer", "PrefixCacheMatchInfo"): "approx-prefix-cache-producer",
        ("active-request-scorer", "InFlightLoad"): "inflight-load-producer",
        ("token-load-scorer", "InFlightLoad"): "inflight-load-producer",
        ("no-hit-lru-scorer", "PrefixCacheMatchInfo"): "approx-prefix-cache-producer",
        ("concurrency", "InFlightLoad"): "inflight-load-producer",
        # optional for the producer: bound because one is configured (the uncached-prompt discount)
        ("inflight-load-producer", "PrefixCacheMatchInfo"): "approx-prefix-cache-producer",
    }
    components = build_components(config, PluginContext())
    assert isinstance(components.saturation_detector, ConcurrencyDetector)
    assert set(components.scheduler.profiles) == {"default"}


def test_build_wires_scheduler_detector_and_scrape_settings() -> None:
    components = build_components(load_config(), PluginContext())
    assert isinstance(components.saturation_detector, UtilizationDetector)
    scrape = components.scrape
    assert scrape is not None
    assert (scrape.scheme, scrape.path, scrape.default_engine) == ("http", "/metrics", "vllm")
    assert dict(scrape.engines) == BUILTIN_ENGINES


def test_data_layer_parameters_reach_the_scraper_settings() -> None:
    text = (
        HEADER
        + (
            "plugins:\n"
            "- type: queue-scorer\n"
            "- {name: src, type: metrics-data-source, parameters: {scheme: https, path: /stats}}\n"
            "- type: core-metrics-extractor\n"
            "  parameters:\n"
            "    defaultEngine: tgi\n"
            "    engineConfigs:\n"
            "    - {name: tgi, queuedRequestsSpec: tgi_queue_size, kvUsageSpec: 'tgi_kv{kind=used}'}\n"
            "dataLayer:\n"
            "  sources: [{pluginRef: src, extractors: [{pluginRef: core-metrics-extractor}]}]\n"
        )
        + ONE_PROFILE
    )
    scrape = build_components(load_config(text), PluginContext()).scrape
    assert scrape is not None
    assert (scrape.scheme, scrape.path, scrape.default_engine) == ("https", "/stats", "tgi")
    tgi = scrape.engines["tgi"]
    assert [s.name for s in tgi.waiting] == ["tgi_queue_size"] and tgi.running == ()
    assert tgi.kv_usage[0].labels == (("kind", "used"),)
    assert scrape.engines["vllm"] is BUILTIN_ENGINES["vllm"]


def test_explicit_empty_data_layer_turns_scraping_off() -> None:
    config = load_config(HEADER + QUEUE + ONE_PROFILE + "dataLayer: {}\n")
    assert config.metrics_source is None
    assert config.warnings == ("dataLayer has no sources: endpoint metrics will not be scraped",)
    assert build_components(config, PluginContext()).scrape is None


def test_scorer_prefix_parameters_are_ignored_with_a_warning_when_a_producer_is_configured() -> None:
    text = HEADER + (
        "plugins:\n- type: approx-prefix-cache-producer\n"
        "- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 32}\n"
        "schedulingProfiles:\n- name: d\n  plugins: [{pluginRef: prefix-cache-scorer}]\n"
    )
    config = load_config(text)
    assert config.plugins["approx-prefix-cache-producer"].params.block_size_tokens == 16  # type: ignore[attr-defined]
    assert config.warnings == (
        "plugin 'prefix-cache-scorer': parameters blockSizeTokens are ignored because "
        "approx-prefix-cache-producer 'approx-prefix-cache-producer' is configured; set them there",
    )


def test_producer_reference_may_name_the_prefix_scorer_as_llm_d_does() -> None:
    text = cfg(
        "plugins:",
        "- {name: prefix, type: prefix-cache-scorer}",
        "- {name: my-producer, type: approx-prefix-cache-producer}",
        "- {type: no-hit-lru-scorer, parameters: {prefixPluginName: prefix}}",
        "schedulingProfiles:",
        "- {name: d, plugins: [{pluginRef: prefix}, {pluginRef: no-hit-lru-scorer}]}",
    )
    bindings = load_config(text).producer_bindings
    assert bindings[("no-hit-lru-scorer", "PrefixCacheMatchInfo")] == "my-producer"
    assert bindings[("prefix", "PrefixCacheMatchInfo")] == "my-producer"


def test_weights_default_to_one_and_may_be_fractional() -> None:
    text = cfg(
        "plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}]",
        "schedulingProfiles:",
        "- name: d",
        "  plugins: [{pluginRef: queue-scorer}, {pluginRef: kv-cache-utilization-scorer, weight: 0.25}]",
    )
    assert load_config(text).profiles[0].scorers == (
        ("queue-scorer", 1.0),
        ("kv-cache-utilization-scorer", 0.25),
    )


def test_existing_picker_and_detector_plugins_are_reused() -> None:
    text = cfg(
        "plugins:",
        "- type: queue-scorer",
        "- {name: best, type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}",
        "- {name: guard, type: utilization-detector, parameters: {queueDepthThreshold: 3}}",
        "schedulingProfiles:",
        "- {name: d, plugins: [{pluginRef: queue-scorer}, {pluginRef: guard}]}",
    )
    config = load_config(text)
    assert config.profiles[0].picker == "best" and config.profiles[0].filters == ("guard",)
    assert config.saturation_detector == "guard"
    implicit = {name for name, spec in config.plugins.items() if spec.implicit}
    assert implicit == {
        "single-profile-handler",
        "metrics-data-source",
        "core-metrics-extractor",
        "openai-parser",
    }


def test_flow_control_section_is_resolved_with_gies_defaults() -> None:
    text = (
        HEADER
        + QUEUE
        + ONE_PROFILE
        + (
            "featureGates: [flowControl]\n"
            "flowControl:\n"
            "  maxBytes: 1Gi\n"
            "  maxRequests: 2k\n"
            "  defaultRequestTTL: 30s\n"
            "  priorityBands: [{priority: 10, maxRequests: 500}]\n"
        )
    )
    config = load_config(text)
    assert config.flow_control is not None
    assert config.flow_control.max_bytes == 2**30 and config.flow_control.max_requests == 2000
    assert config.flow_control.default_request_ttl == 30.0
    spec = config.flow_control_spec
    assert spec is not None and config.warnings == ()
    assert (spec.max_bytes, spec.max_requests, spec.default_request_ttl) == (2**30, 2000, 30.0)
    band = spec.bands[10]
    assert (band.max_bytes, band.max_requests) == (1_000_000_000, 500)  # GIE's band default bytes
    assert (band.fairness, band.ordering) == ("global-strict-fairness-policy", "fcfs-ordering-policy")
    assert spec.usage_limit_policy == "static-usage-limit-policy"
    assert spec.saturation_detector == config.saturation_detector
    implicit = {name for name, s in config.plugins.items() if s.implicit}
    assert {"global-strict-fairness-policy", "fcfs-ordering-policy", "static-usage-limit-policy"} <= implicit
    ungated = load_config(HEADER + QUEUE + ONE_PROFILE + "flowControl: {maxRequests: 10}\n")
    assert ungated.warnings == ("flowControl is ignored without the flowControl feature gate (as in GIE)",)


def test_parser_section_must_name_an_openai_parser() -> None:
    config = load_config(
        HEADER + QUEUE + "- type: openai-parser\n" + ONE_PROFILE + "parser: {pluginRef: openai-parser}\n"
    )
    assert config.parser == "openai-parser"
    assert error(HEADER + QUEUE + ONE_PROFILE + "parser: {pluginRef: queue-scorer}\n") == (
        "invalid EndpointPickerConfig: parser.pluginRef: plugin 'queue-scorer' is a queue-scorer, "
        "not a request parser"
    )


def test_implicit_plugin_name_taken_by_another_type_is_reported() -> None:
    text = cfg(
        "plugins: [{name: max-score-picker, type: queue-scorer}]",
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: max-score-picker}]}]",
    )
    assert "the name 'max-score-picker' is needed for a default max-score-picker plugin" in error(text)


PROFILE_D = "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer}]}]"
TWO_PROFILES = "schedulingProfiles: [{name: a}, {name: b}]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a", "expected a YAML mapping with apiVersion and kind"),
        (
            "apiVersion: v1\nkind: EndpointPickerConfig\n",
            "apiVersion: Input should be 'inference.networking.x-k8s.io/v1alpha1' or 'llm-d.ai/v1alpha1'",
        ),
        ("apiVersion: llm-d.ai/v1alpha1\n", "kind: Field required"),
        (
            cfg("plugin: []"),
            "plugin: unknown field (allowed: apiVersion, kind, featureGates, plugins, schedulingProfiles, "
            "saturationDetector, dataLayer, data, parser, requestHandler, flowControl); "
            "did you mean 'plugins'?",
        ),
        (
            cfg("featureGates: [superFast]"),
            "featureGates[0]: unknown feature gate 'superFast' "
            "(known: flowControl, enableLegacyMetrics, dataLayer, prepareDataPlugins, "
            "haPopulateNonLeaderDatastore)",
        ),
        (
            cfg("featureGates: [flowcontrol]"),
            "featureGates[0]: unknown feature gate 'flowcontrol' "
            "(known: flowControl, enableLegacyMetrics, dataLayer, prepareDataPlugins, "
            "haPopulateNonLeaderDatastore); "
            "did you mean 'flowControl'?",
        ),
        (
            cfg("plugins: [{type: predicted-latency-scorer}]"),
            "plugins[0].type: plugin type 'predicted-latency-scorer' is not available in this EPP "
            "(needs a service this EPP cannot run): upstream, GIE v1.2-v1.3 SLO-aware routing scorer "
            "over the latency-predictor sidecars' TTFT/TPOT predictions; instead: use the load scorers "
            "(queue-scorer, kv-cache-utilization-scorer, token-load-scorer) and prefix-cache-scorer",
        ),
        (
            cfg("plugins: [{type: latency-scorer}]"),
            "plugins[0].type: plugin type 'latency-scorer' is not available in this EPP (needs a service "
            "this EPP cannot run): upstream, GIE/llm-d's latency-predictor family: per-request TTFT/TPOT "
            "predictions from the latency-predictor training and prediction sidecars, used to score, tier "
            "and admit by SLO; instead: use the load scorers (queue-scorer, kv-cache-utilization-scorer, "
            "token-load-scorer) and prefix-cache-scorer",
        ),
        (
            cfg("plugins: [{type: queue-scorer}, {type: queue-scorer}]"),
            "plugins[1].name: duplicate plugin name 'queue-scorer'",
        ),
        (
            cfg("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: two}}]"),
            "plugins[0].parameters.maxNumOfEndpoints: Input should be a valid integer",
        ),
        (
            cfg("plugins: [{type: concurrency-detector, parameters: {concurrencyMode: magic}}]"),
            "plugins[0].parameters.concurrencyMode: Input should be 'requests', 'tokens' or 'hybrid'",
        ),
        (
            cfg("plugins: [{type: prefix-cache-scorer, parameters: {blockSizeTokens: 0}}]"),
            "plugins[0].parameters.blockSizeTokens: Input should be greater than 0",
        ),
        (
            cfg(
                "plugins: [{type: queue-scorer}]",
                "schedulingProfiles: [{name: d, plugins: [{pluginRef: kv}]}]",
            ),
            "schedulingProfiles[0].plugins[0].pluginRef: no plugin named 'kv' (defined: queue-scorer)",
        ),
        (
            cfg(
                "plugins: [{type: queue-scorer}]",
                "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer, weight: high}]}]",
            ),
            "schedulingProfiles[0].plugins[0].weight: Input should be a valid number",
        ),
        (
            cfg("plugins: [{type: queue-scorer}]", TWO_PROFILES),
            "plugins: 2 scheduling profiles need a profile handler plugin that runs several profiles; "
            "single-profile-handler (the default) runs exactly one",
        ),
        (
            cfg("plugins: [{type: single-profile-handler}]", TWO_PROFILES),
            "schedulingProfiles: single-profile-handler 'single-profile-handler' runs exactly one profile, "
            "but 2 are defined (a, b)",
        ),
        (
            cfg("plugins: [{type: single-profile-handler}]", "schedulingProfiles: [{name: a}, {name: a}]"),
            "schedulingProfiles[1].name: duplicate profile name 'a'",
        ),
        (
            cfg(
                "plugins: [{type: max-score-picker}, {type: random-picker}]",
                "schedulingProfiles:",
                "- {name: d, plugins: [{pluginRef: max-score-picker}, {pluginRef: random-picker}]}",
            ),
            "schedulingProfiles[0]: profile 'd' has 2 pickers (max-score-picker, random-picker); "
            "a profile takes one",
        ),
        (
            cfg(
                "plugins: [{type: queue-scorer}]", PROFILE_D, "saturationDetector: {pluginRef: queue-scorer}"
            ),
            "saturationDetector.pluginRef: plugin 'queue-scorer' is a queue-scorer, "
            "not a saturation detector",
        ),
        (
            cfg("saturationDetector: {pluginRef: x, queueDepthThreshold: 3}"),
            "saturationDetector: give either pluginRef (v1.5+) or the thresholds (v1.2-v1.4), not both",
        ),
        (cfg("dataLayer: {}", "data: {}"), "give dataLayer (v1.5+) or data (v1.3-v1.4), not both"),
        (
            cfg(
                "plugins: [{type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: nope}}]",
                "schedulingProfiles: [{name: d, plugins: [{pluginRef: prefix-cache-scorer}]}]",
            ),
            "plugins: 'prefix-cache-scorer' parameter prefixMatchInfoProducerName names 'nope': "
            "no plugin by that name",
        ),
        (
            cfg(
                "plugins:",
                "- type: prefix-cache-scorer",
                "- {name: p1, type: approx-prefix-cache-producer}",
                "- {name: p2, type: approx-prefix-cache-producer}",
                "- {name: approx-prefix-cache-producer, type: queue-scorer}",
                "schedulingProfiles: [{name: d, plugins: [{pluginRef: prefix-cache-scorer}]}]",
            ),
            "plugins: 'prefix-cache-scorer' reads PrefixCacheMatchInfo, which 2 plugins produce (p1, p2); "
            "name one with prefixMatchInfoProducerName",
        ),
        (
            cfg("flowControl: {maxBytes: lots}"),
            "flowControl.maxBytes: invalid quantity 'lots': "
            "use a number with an optional suffix such as 1Gi or 500M",
        ),
        (
            cfg("plugins: [{type: core-metrics-extractor, parameters: {defaultEngine: tgi}}]"),
            "plugins[0].parameters: defaultEngine 'tgi' is not one of "
            "['sglang', 'triton-tensorrt-llm', 'trtllm-serve', 'vllm']",
        ),
        (
            cfg("plugins: [{type: core-metrics-extractor, parameters: {engineConfigs: [{name: default}]}}]"),
            "plugins[0].parameters.engineConfigs[0].name: engine name 'default' is reserved",
        ),
    ],
)
def test_broken_configs_are_rejected_with_exact_messages(text: str, message: str) -> None:
    assert error(text) == f"invalid EndpointPickerConfig: {message}"


def test_data_layer_references_are_checked() -> None:
    text = (
        HEADER + QUEUE + ONE_PROFILE + "dataLayer:\n  sources: [{pluginRef: queue-scorer, extractors: []}]\n"
    )
    assert error(text).splitlines() == [
        "invalid EndpointPickerConfig:",
        "  dataLayer.sources[0].pluginRef: plugin 'queue-scorer' is a queue-scorer, not a metrics source",
        "  dataLayer.sources[0].extractors: exactly one extractor is supported, got 0",
    ]


def test_unknown_plugin_type_lists_the_known_types() -> None:
    message = error(HEADER + "plugins:\n- type: nope\n")
    assert message.startswith(
        "invalid EndpointPickerConfig: plugins[0].type: unknown plugin type 'nope'; known types: "
    )
    assert "queue-scorer" in message and "session-affinity-scorer" in message
    assert "by-label-selector" not in message  # aliases load but are not advertised


def test_several_problems_are_reported_together() -> None:
    lines = error(
        HEADER + "plugins:\n- type: nope\n- type: queue-scorer\n  parameters: {maxNumOfEndpoints: x}\n"
        "- type: max-score-picker\n  parameters: {maxNumOfEndpoints: x}\n"
    ).splitlines()
    assert lines[0] == "invalid EndpointPickerConfig:"
    assert lines[1].startswith("  plugins[0].type: unknown plugin type 'nope'; known types: ")
    assert lines[2:] == ["  plugins[2].parameters.maxNumOfEndpoints: Input should be a valid integer"]


@pytest.mark.parametrize("text", [cfg(QUEUE) + "---\n", "---\n" + cfg(QUEUE) + "---\n# end\n...\n"])
def test_empty_documents_beside_the_config_are_skipped(text: str) -> None:
    """A config file ending in `---` loads, as Go's loader reads it (it failed: 'expected a single
    document in the stream')."""
    assert "queue-scorer" in load_config(text).plugins


def test_a_second_document_is_refused_naming_its_line() -> None:
    assert error(cfg(QUEUE) + "---\n" + cfg("plugins: []")) == (
        "invalid EndpointPickerConfig: the file holds 2 YAML documents (lines 1, 7); it must hold one "
        "EndpointPickerConfig"
    )


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure-Python parser"])
@pytest.mark.parametrize("opening", ["[", "{a: "], ids=["lists", "mappings"])
def test_yaml_nested_past_the_stack_is_an_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, libyaml: bool, opening: str
) -> None:
    """100,000 nested levels made `epp config check` and `epp serve` die with a RecursionError and
    its traceback; the file is now refused like any other broken YAML."""
    monkeypatch.setattr(yaml, "__with_libyaml__", libyaml and yaml.__with_libyaml__)
    closing = "]" if opening == "[" else "}"
    text = cfg(QUEUE) + "x: " + opening * 100_000 + "1" * (opening != "[") + closing * 100_000 + "\n"
    assert error(text).startswith("invalid EndpointPickerConfig: not valid YAML: ")


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure-Python parser"])
def test_a_key_written_twice_is_refused_naming_both_lines(
    monkeypatch: pytest.MonkeyPatch, libyaml: bool
) -> None:
    """GIE decodes the config strictly (EnableStrict): a duplicate key is an error there, where
    PyYAML kept the last value, so the first `plugins:` list was silently dropped."""
    monkeypatch.setattr(yaml, "__with_libyaml__", libyaml and yaml.__with_libyaml__)
    message = error(cfg(QUEUE, "plugins:", "- type: kv-cache-utilization-scorer"))
    assert message.startswith("invalid EndpointPickerConfig: not valid YAML: ")
    assert "found duplicate key 'plugins' (first on line 3)" in message and "line 6, column 1" in message
    nested = error(
        cfg("plugins:", "- type: prefix-cache-scorer", "  parameters: {blockSize: 16, blockSize: 32}")
    )
    assert "found duplicate key 'blockSize' (first on line 5)" in nested


def test_a_key_brought_in_by_a_merge_may_be_overridden() -> None:
    text = cfg(
        "plugins:",
        "- type: prefix-cache-scorer",
        "  parameters: &p {blockSizeTokens: 16}",
        "- type: prefix-cache-scorer",
        "  name: other",
        "  parameters: {<<: *p, blockSizeTokens: 32}",
    )
    assert load_config(text).plugins["other"].params.block_size_tokens == 32  # type: ignore[attr-defined]


def test_a_file_that_is_not_utf8_is_named_with_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "epp-config.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    assert str(caught.value) == f"cannot read config file {path}: not UTF-8 text (byte 0)"


def test_invalid_yaml_and_unreadable_files(tmp_path: Path) -> None:
    assert error("a: [").startswith("invalid EndpointPickerConfig: not valid YAML: ")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.yaml")
