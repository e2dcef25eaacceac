"""Every EndpointPickerConfig collected verbatim from upstream (tests/data/upstream/configs/: GIE
v1.0-v1.5 and main, llm-d-inference-scheduler, llm-d-router, llm-d's guides, llm-d-benchmark,
llm-d-kv-cache) is loaded unchanged
with the real loader and built, one test per file. Each file's outcome is explicit below: it loads
(with exactly the warnings listed, each given by its start), or it is refused with the message
quoted, for one of these reasons:

- SERVICE: a plugin needs a service this EPP cannot run (latency-predictor sidecars, DCGM
  exporter, remote clusters' EPPs);
- TEST_ONLY: a type or feature gate registered only by the upstream Go tests (`test-*`,
  `mock-metrics-source`, `test-feature-gate`);
- DOCS: a docs placeholder type (`custom-scorer`) or typo (the `-pluginRef:` profile key);
- GO_REFUSES: invalid for the Go EPP as well (an unrendered `${PRIMARY_PORT}` template value, a
  profile naming an undefined plugin, a type no GIE or llm-d release registers, a field the
  router's strict decoder does not know, a type only an unreleased router build registers);
- OTHER_ISSUE: none left (the flow-control policies and llm-d's burst-prefix producer were);
- MISSING: an upstream plugin this EPP does not implement yet (the error says what it does and
  what to use instead).

Counts (195 documents): 161 load; refused: 11 SERVICE, 10 TEST_ONLY, 4 DOCS, 9 GO_REFUSES,
0 OTHER_ISSUE, 0 MISSING. `test_summary` prints them and checks them against this docstring. The 9
snippets in configs_nonstandard/ (another or no apiVersion) are refused, as by the Go decoder."""

from __future__ import annotations

import enum
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from epp.config.build import build_components
from epp.config.loader import load_config_file
from epp.framework import PluginContext
from epp.params.strict import ConfigError

CONFIGS = Path(__file__).parents[2] / "data" / "upstream" / "configs"


class Reason(enum.Enum):
    SERVICE = "needs a service this EPP cannot run"
    TEST_ONLY = "upstream test-only type or feature gate"
    DOCS = "upstream docs placeholder or typo"
    GO_REFUSES = "invalid for the Go EPP too"
    OTHER_ISSUE = "flow control (other issues)"
    MISSING = "upstream plugin not implemented yet"


SERVICE, TEST_ONLY, DOCS = Reason.SERVICE, Reason.TEST_ONLY, Reason.DOCS
GO_REFUSES, OTHER_ISSUE, MISSING = Reason.GO_REFUSES, Reason.OTHER_ISSUE, Reason.MISSING


@dataclass(frozen=True)
class Loads:
    """Loads and builds; `warnings` are the start of each warning, in order."""

    warnings: tuple[str, ...]

    def __init__(self, *warnings: str) -> None:
        object.__setattr__(self, "warnings", warnings)


@dataclass(frozen=True)
class Refused:
    reason: Reason
    message: str  # a line of the error, from its start


EXPECTED: dict[str, Loads | Refused] = {
    "gie-1748e82__config__charts__inferencepool__README.md.yaml": Refused(
        DOCS,
        "plugins[0].type: plugin type 'custom-scorer' is not available in this EPP (an illustrative placeholder from the upstream docs)",
    ),
    "gie-1748e82__conformance__resources__base.yaml": Loads(),
    "gie-1748e82__pkg__epp__framework__plugins__requesthandling__parsers__README.md.yaml": Loads(),
    "gie-1748e82__site-src__guides__epp-configuration__config-text.md__2.yaml": Loads(),
    "gie-1748e82__site-src__guides__epp-configuration__config-text.md__3.yaml": Loads(),
    "gie-1748e82__site-src__guides__troubleshooting.md__1.yaml": Loads(
        "plugins[2].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 16"
    ),
    "gie-1748e82__site-src__guides__troubleshooting.md__2.yaml": Refused(
        SERVICE,
        "plugins[0].type: plugin type 'predicted-latency-producer' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "gie-1748e82__site-src__implementations__model-servers.md__1.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "gie-1748e82__site-src__implementations__model-servers.md__2.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "gie-1748e82__test__integration__epp__testdata__datalayer-config.yaml": Refused(
        TEST_ONLY,
        "plugins[5].type: plugin type 'mock-metrics-source' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "gie-1748e82__test__integration__epp__testdata__default-config.yaml": Loads(),
    "gie-1748e82__test__integration__epp__testdata__request-attribute-reporter-config.yaml": Loads(
        "schedulingProfiles[0].plugins[0].pluginRef: plugin 'openai-parser' is a openai-parser, which is not ",
        "schedulingProfiles[0].plugins[1].pluginRef: plugin 'total-tokens-cost-reporter' is a request-attribu",
    ),
    "gie-1748e82__test__testdata__configloader_1_test.yaml": Refused(
        TEST_ONLY,
        "plugins[0].type: plugin type 'test-one' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "gie-1748e82__test__testdata__inferencepool-e2e.yaml": Loads(),
    "gie-v1.0.0__site-src__guides__epp-configuration__config-text.md__2.yaml": Loads(
        "plugins[0].parameters: hashBlockSize is deprecated: read as blockSize",
        "plugins[0].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
    ),
    "gie-v1.0.0__site-src__guides__epp-configuration__config-text.md__3.yaml": Refused(
        DOCS,
        "schedulingProfiles[0].-pluginRef: unknown field (allowed: name, plugins); did you mean 'plugins'?",
    ),
    "gie-v1.0.0__test__testdata__configloader_1_test.yaml": Refused(
        TEST_ONLY,
        "plugins[0].type: plugin type 'test-one' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "gie-v1.1.0__test__testdata__configloader_1_test.yaml": Refused(
        TEST_ONLY,
        "plugins[0].type: plugin type 'test-one' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "gie-v1.2.1__config__charts__inferencepool__helm-default__default-plugins.yaml": Loads(),
    "gie-v1.2.1__conformance__resources__base.yaml": Loads(),
    "gie-v1.2.1__test__testdata__configloader_1_test.yaml": Refused(
        TEST_ONLY,
        "plugins[0].type: plugin type 'test-one' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "gie-v1.3.1__config__charts__inferencepool__helm-latency-predictor__default-plugins.yaml": Refused(
        SERVICE,
        "plugins[3].type: plugin type 'predicted-latency-scorer' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "gie-v1.3.1__site-src__guides__epp-configuration__config-text.md__2.yaml": Loads(
        "plugins[0].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 "
    ),
    "gie-v1.3.1__site-src__guides__epp-configuration__config-text.md__3.yaml": Refused(
        DOCS,
        "schedulingProfiles[0].-pluginRef: unknown field (allowed: name, plugins); did you mean 'plugins'?",
    ),
    "gie-v1.4.0__site-src__implementations__model-servers.md__1.yaml": Loads(
        "plugins[0].type: 'model-server-protocol-metrics' is a deprecated name of 'core-metrics-extractor'",
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n",
    ),
    "gie-v1.4.0__site-src__implementations__model-servers.md__2.yaml": Loads(
        "plugins[0].type: 'model-server-protocol-metrics' is a deprecated name of 'core-metrics-extractor'",
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n",
    ),
    "gie-v1.4.0__test__testdata__configloader_1_test.yaml": Refused(
        TEST_ONLY,
        "plugins[0].type: plugin type 'test-one' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "gie-v1.5.0__config__charts__inferencepool__helm-default__default-plugins.yaml": Loads(),
    "gie-v1.5.0__config__charts__inferencepool__helm-latency-predictor__default-plugins.yaml": Refused(
        SERVICE,
        "plugins[5].type: plugin type 'predicted-latency-producer' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "gie-v1.5.0__config__charts__inferencepool__helm-sglang__default-plugins.yaml": Loads(),
    "gie-v1.5.0__config__charts__inferencepool__helm-triton-tensorrt-llm__default-plugins.yaml": Loads(),
    "gie-v1.5.0__config__charts__inferencepool__helm-trtllm-serve__default-plugins.yaml": Loads(),
    "gie-v1.5.0__site-src__guides__troubleshooting.md__2.yaml": Refused(
        SERVICE,
        "plugins[3].type: plugin type 'predicted-latency-scorer' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "llmd-0b8e5ad__guides__coordinator-epd__router__coordinator-epd.values.yaml": Refused(
        GO_REFUSES,
        "plugins[3].type: plugin type 'header-phase-profile-handler' is not available in this EPP (registered by no GIE",
    ),
    "llmd-04ca254__guides__coord-disaggregation__router__coord-disaggregation.values.yaml": Loads(),
    "llmd-0b25b12__guides__p2p-kv-cache-sharing__router__p2p-kv-cache-sharing.values.yaml": Loads(),
    "llmd-076e65d__guides__precise-prefix-cache-routing__router__precise-prefix-cache-routing.values.yaml": Loads(
        "plugins[0].type: 'tokenizer' is a deprecated name of 'token-producer'",
    ),
    "llmd-0a3b0c9__guides__optimized-baseline__router__optimized-baseline.values.yaml": Loads(
        "plugins[3].parameters: unknown field 'maxTokensInFlightPenalty' ignored; did you mean 'maxTTFTPenalt"
    ),
    "llmd-126f65d__guides__pd-disaggregation__gaie-pd__values.yaml": Loads(
        "plugins[0].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[4].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[4].parameters: hashBlockSize (llm-d <= v0.5) is ignored: the prefix block size is a paramete",
        "plugins[4].parameters: threshold 0 (llm-d <= v0.5) is deprecated: read as decider always-disagg-pd-d",
    ),
    "llmd-126f65d__guides__precise-prefix-cache-aware__gaie-kv-events__values.yaml": Loads(),
    "llmd-126f65d__guides__wide-ep-lws__manifests__inferencepool.values.yaml": Loads(
        "plugins[0].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[4].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[4].parameters: hashBlockSize (llm-d <= v0.5) is ignored: the prefix block size is a paramete",
        "plugins[4].parameters: threshold 0 (llm-d <= v0.5) is deprecated: read as decider always-disagg-pd-d",
    ),
    "llmd-1456868__guides__turn-priority-fairness__router__turn-priority-fairness.values.yaml": Refused(
        GO_REFUSES,
        "flowControl.priorityBands[0].defaultRequestTTL: unknown field (allowed: maxBytes, maxRequests, fairnessPolicyRef,",
    ),
    "llmd-1aaa821__guides__agentic-serving__router__agentic-serving-gpu.values.yaml": Refused(
        GO_REFUSES,
        "schedulingProfiles[1].plugins[1].pluginRef: no plugin named 'active-request-scorer' (defined: disagg-headers-handler,",
    ),
    "llmd-28097b1__guides__tiered-prefix-cache__router__multi-host__tiered-prefix-cache-cpu.values.yaml": Loads(
        "plugins: 'no-hit-lru-scorer' reads PrefixCacheMatchInfo from a default approx-prefix-cache-producer "
    ),
    "llmd-3ed9c2d__guides__pd-disaggregation__router__pd-multi-tier.values.yaml": Loads(
        "plugins[2].parameters: deciderPluginName is deprecated: read as prefillDeciderPluginName"
    ),
    "llmd-3440ef3__guides__precise-prefix-cache-routing__router__lmetric.values.yaml": Refused(
        GO_REFUSES,
        "plugins[4].type: plugin type 'lmetric-scorer' is not available in this EPP (registered by no GIE or llm-d",
    ),
    "llmd-5c4a203__guides__multimodal-serving__precise-affinity__router__precise-affinity.values.yaml": Loads(),
    "llmd-6f9e065__guides__context-length-aware-pd__router.values.yaml": Loads(
        "plugins[2].parameters: deciderPluginName is deprecated: read as prefillDeciderPluginName"
    ),
    "llmd-7f95e05__guides__agentic-serving__router__fairness-las-plugins.yaml": Loads(
        "plugins[4].parameters: lasDecayFactor (llm-d v0.10) is ignored: llm-d main removed it",
    ),
    "llmd-a874822__guides__precise-prefix-cache-routing__router__sglang.values.yaml": Loads(),
    "llmd-b568fd3__guides__agentic-serving__router__agentic-serving-gpu-program-aware.values.yaml": Loads(),
    "llmd-bench-8bc9f1d__config__README.md.yaml": Loads(
        "schedulingProfiles[0].plugins[0].pluginRef: plugin 'token-producer' is a token-producer, which is",
    ),
    "llmd-bench-8bc9f1d__config__scenarios__cicd__ocp-keda-fma-hotstart.yaml": Loads(),
    "llmd-bench-8bc9f1d__config__scenarios__examples__gpu.yaml": Loads(
        "schedulingProfiles[0].plugins[0].pluginRef: plugin 'token-producer' is a token-producer, which is",
    ),
    "llmd-bench-8bc9f1d__config__scenarios__examples__multi-model-optimized-baseline.yaml": Loads(),
    "llmd-bench-8bc9f1d__config__scenarios__experimental__kimi-k3-h100.yaml": Loads(),
    "llmd-bench-8bc9f1d__config__scenarios__guides__agentic-serving.yaml": Loads(),
    "llmd-bench-8bc9f1d__config__scenarios__guides__flow-control.yaml": Loads(),
    "llmd-bench-8bc9f1d__config__scenarios__guides__multimodal-serving-aggregation.yaml": Loads(),
    "llmd-bench-8bc9f1d__config__scenarios__guides__pd-disaggregation.yaml": Loads(
        "plugins[2].parameters: deciderPluginName is deprecated: read as prefillDeciderPluginName"
    ),
    "llmd-bench-8bc9f1d__config__scenarios__guides__precise-prefix-cache-routing.yaml": Loads(),
    "llmd-bench-8bc9f1d__config__scenarios__guides__predicted-latency-routing.yaml": Refused(
        SERVICE,
        "plugins[1].type: plugin type 'predicted-latency-producer' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "llmd-bench-8bc9f1d__config__scenarios__guides__tiered-prefix-cache.yaml": Loads(
        "plugins: 'no-hit-lru-scorer' reads PrefixCacheMatchInfo from a default approx-prefix-cache-producer "
    ),
    "llmd-bench-8bc9f1d__config__scenarios__guides__wide-ep-lws.yaml": Loads(
        "plugins[2].parameters: deciderPluginName is deprecated: read as prefillDeciderPluginName"
    ),
    "llmd-bench-8bc9f1d__config__scenarios__guides__workload-autoscaling.yaml": Loads(),
    "llmd-bench-v0.5.0__setup__presets__gaie__default.yaml": Loads(),
    "llmd-bench-v0.5.0__setup__presets__gaie__inf-sche-kv.yaml": Loads(
        "plugins[0].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'"
    ),
    "llmd-bench-v0.5.0__setup__presets__gaie__inf-sche-none.yaml": Loads(),
    "llmd-bench-v0.5.0__setup__presets__gaie__inf-sche-prefix-kv-queue.yaml": Refused(
        GO_REFUSES,
        "plugins[5].type: plugin type 'queue-cache-scorer' is not available in this EPP (registered by no GIE or llm-d release, so the Go EPPs refuse it too)",
    ),
    "llmd-bench-v0.5.0__setup__presets__gaie__inf-sche-prefix-kv.yaml": Refused(
        GO_REFUSES,
        "schedulingProfiles[0].plugins[4].pluginRef: no plugin named 'queue-scorer' (defined: prefix-cache-scorer, decode-filter,",
    ),
    "llmd-bench-v0.5.0__setup__presets__gaie__inf-sche-prefix.yaml": Loads(),
    "llmd-bench-v0.5.0__setup__presets__gaie__inf-sche-queue.yaml": Loads(),
    "llmd-bench-v0.5.0__setup__presets__gaie__pd-config.yaml": Loads(
        "plugins[0].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[4].parameters: unknown field 'hashBlockSize' ignored (known: none)",
        "plugins[4].parameters: unknown field 'maxPrefixBlocksToMatch' ignored (known: none)",
        "plugins[4].parameters: unknown field 'lruCapacityPerServer' ignored (known: none)",
        "plugins[5].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[5].parameters: hashBlockSize (llm-d <= v0.5) is ignored: the prefix block size is a paramete",
        "plugins[5].parameters: threshold 0 (llm-d <= v0.5) is deprecated: read as decider always-disagg-pd-d",
    ),
    "llmd-bench-v0.5.0__setup__presets__gaie__precise-prefix-cache-aware.yaml": Loads(),
    "llmd-bench-v0.5.0__setup__presets__gaie__prefix-cache-estimate-config.yaml": Loads(
        "plugins[1].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
        "plugins[2].parameters: hashBlockSize is deprecated: read as blockSize",
        "plugins[2].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 16",
    ),
    "llmd-bench-v0.5.0__setup__presets__gaie__prefix-cache-tracking-config.yaml": Loads(
        "plugins[2].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-cache-scorer",
        "plugins[2].parameters: kvEventsConfig.zmqEndpoint not set: cache_tracking's default tcp://*:5557 is bound",
        "plugins[3].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-bench-v0.7.0__config__scenarios__examples__spyre.yaml": Loads(
        "plugins[0].type: 'tokenizer' is a deprecated name of 'token-producer'",
        "schedulingProfiles[0].plugins[0].pluginRef: plugin 'tokenizer' is a token-producer, which is not a",
    ),
    "llmd-kvcache-7be76e1__benchmarking__37-capacity__README.md__1.yaml": Loads(
        "plugins[1].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-kvcache-7be76e1__benchmarking__37-capacity__README.md__2.yaml": Loads(
        "plugins[1].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-kvcache-7be76e1__benchmarking__37-capacity__README.md__3.yaml": Loads(
        "plugins[1].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-c",
        "plugins[1].parameters: kvEventsConfig.zmqEndpoint not set: cache_tracking's default tcp://*:5557 is bound",
        "plugins[2].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-kvcache-7be76e1__benchmarking__37-capacity__README.md__4.yaml": Loads(),
    "llmd-kvcache-7be76e1__benchmarking__73-capacity__README.md__1.yaml": Loads(
        "plugins[2].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-kvcache-7be76e1__benchmarking__73-capacity__README.md__3.yaml": Loads(
        "plugins[1].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-c",
        "plugins[1].parameters: kvEventsConfig.zmqEndpoint not set: cache_tracking's default tcp://*:5557 is bound",
        "plugins[2].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-kvcache-v0.8.0__benchmarking__37-capacity__README.md__3.yaml": Loads(
        "plugins[1].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-c",
        "plugins[1].parameters: kvEventsConfig.zmqEndpoint not set: cache_tracking's default tcp://*:5557 is bound",
        "plugins[2].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-kvcache-v0.8.0__benchmarking__73-capacity__README.md__3.yaml": Loads(
        "plugins[1].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-c",
        "plugins[1].parameters: kvEventsConfig.zmqEndpoint not set: cache_tracking's default tcp://*:5557 is bound",
        "plugins[2].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-router-ebab687__config__charts__README.md.yaml": Refused(
        DOCS,
        "plugins[1].type: plugin type 'custom-scorer' is not available in this EPP (an illustrative placeholder from the upstream docs)",
    ),
    "llmd-router-ebab687__config__charts__llm-d-router-gateway__helm-default__default-plugins.yaml": Loads(),
    "llmd-router-ebab687__config__charts__llm-d-router-gateway__helm-default__payload-agnostic.yaml": Loads(),
    "llmd-router-ebab687__config__charts__llm-d-router-gateway__helm-sglang__default-plugins.yaml": Loads(),
    "llmd-router-ebab687__config__charts__llm-d-router-gateway__helm-triton-tensorrt-llm__default-plugins.yaml": Loads(),
    "llmd-router-ebab687__config__charts__llm-d-router-gateway__helm-trtllm-serve__default-plugins.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__dp-epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__epp-burst-prefix-cache-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__epp-estimate-prefix-cache-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__epp-mm-embeddings-cache-config.yaml": Loads(
        "plugins[4].parameters: unknown field 'cacheSizeInMB' ignored; did you mean 'cacheSizeInMBPerServer'?",
    ),
    "llmd-router-ebab687__deploy__config__epp-precise-prefix-cache-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__pd-epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__pd-topology-epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__probabilistic-admitter-epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__sim-e-p-d-epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__sim-e-pd-epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__sim-epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__sim-epp-gpu-config.yaml": Refused(
        SERVICE,
        "plugins[0].type: plugin type 'dcgm-data-source' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "llmd-router-ebab687__deploy__config__sim-epp-kvcache-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__sim-epp-no-hit-lru.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__sim-epp-tokenizer-vllm-http-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__sim-pd-epp-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__sim-program-aware-config.yaml": Loads(),
    "llmd-router-ebab687__deploy__config__soft-reflective-ceiling-epp-config.yaml": Loads(),
    "llmd-router-ebab687__docs__architecture.md__2.yaml": Loads(),
    "llmd-router-ebab687__docs__create_new_filter.md.yaml": Loads(),
    "llmd-router-ebab687__docs__disaggregation.md__1.yaml": Loads(),
    "llmd-router-ebab687__docs__disaggregation.md__2.yaml": Loads(),
    "llmd-router-ebab687__pkg__epp__framework__plugins__README.md.yaml": Refused(
        SERVICE,
        "plugins[0].type: plugin type 'multicluster-file-discovery' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "llmd-router-ebab687__pkg__epp__framework__plugins__datalayer__extractor__dcgm__README.md.yaml": Refused(
        SERVICE,
        "plugins[0].type: plugin type 'dcgm-data-source' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "llmd-router-ebab687__pkg__epp__framework__plugins__datalayer__source__dcgm__README.md.yaml": Refused(
        SERVICE,
        "plugins[0].type: plugin type 'dcgm-data-source' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "llmd-router-ebab687__pkg__epp__framework__plugins__datalayer__source__models__README.md.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requestcontrol__admitter__probabilisticadmitter__README.md.yaml": Loads(),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requestcontrol__requestattributereporter__README.md.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requestcontrol__requestheader__agentidentity__README.md__1.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requestcontrol__requestheader__agentidentity__README.md__2.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requestcontrol__screener__disaggregatedsetrollout__README.md.yaml": Loads(),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requesthandling__parsers__README.md__1.yaml": Loads(),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requesthandling__parsers__README.md__2.yaml": Loads(),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requesthandling__parsers__README.md__3.yaml": Loads(),
    "llmd-router-ebab687__pkg__epp__framework__plugins__requesthandling__parsers__vertexai__README.md.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "llmd-router-ebab687__test__integration__epp__testdata__datalayer-config.yaml": Refused(
        TEST_ONLY,
        "plugins[5].type: plugin type 'mock-metrics-source' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "llmd-router-ebab687__test__integration__epp__testdata__default-config.yaml": Loads(),
    "llmd-router-ebab687__test__integration__epp__testdata__request-attribute-reporter-config.yaml": Refused(
        TEST_ONLY,
        "plugins[1].type: plugin type 'mock-metrics-source' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "llmd-router-ebab687__test__perf__config__router-configs__optimized-baseline.yaml": Loads(),
    "llmd-router-ebab687__test__perf__config__router-configs__precise-prefix.yaml": Loads(),
    "llmd-router-ebab687__test__perf__config__router-configs__random-only-default-parsers.yaml": Loads(),
    "llmd-router-ebab687__test__perf__config__router-configs__random-passthrough-parser.yaml": Loads(),
    "llmd-router-ebab687__test__testdata__configloader_1_test.yaml": Refused(
        TEST_ONLY,
        "featureGates[0]: 'test-feature-gate' is a test-only gate of the upstream Go config-loader tests",
    ),
    "llmd-router-v0.10.0__deploy__config__sim-epp-gpu-config.yaml": Refused(
        SERVICE,
        "plugins[0].type: plugin type 'dcgm-data-source' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "llmd-router-v0.10.0__deploy__config__sim-epp-kvcache-config.yaml": Loads(),
    "llmd-router-v0.10.0__pkg__epp__framework__plugins__datalayer__extractor__dcgm__README.md.yaml": Refused(
        SERVICE,
        "plugins[0].type: plugin type 'dcgm-data-source' is not available in this EPP (needs a service this EPP cannot run)",
    ),
    "llmd-router-v0.9.0__deploy__config__pd-epp-config.yaml": Loads(),
    "llmd-router-v0.9.0__deploy__config__sim-e-p-d-epp-config.yaml": Loads(),
    "llmd-router-v0.9.0__deploy__config__sim-epp-config.yaml": Loads(),
    "llmd-router-v0.9.0__deploy__config__sim-epp-no-hit-lru.yaml": Loads(),
    "llmd-router-v0.9.0__deploy__config__sim-pd-epp-config.yaml": Loads(),
    "llmd-router-v0.9.0__docs__architecture.md__2.yaml": Loads(),
    "llmd-router-v0.9.0__docs__disaggregation.md__1.yaml": Loads(),
    "llmd-router-v0.9.0__docs__disaggregation.md__2.yaml": Loads(),
    "llmd-router-v0.9.0__pkg__epp__framework__plugins__datalayer__source__models__README.md.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "llmd-router-v0.9.0__test__testdata__configloader_1_test.yaml": Refused(
        TEST_ONLY,
        "plugins[0].type: plugin type 'test-one' is not available in this EPP (a test-only type of the upstream Go tests)",
    ),
    "llmd-sched-520af47__deploy__config__epp-precise-prefix-cache-config.yaml": Loads(),
    "llmd-sched-520af47__deploy__config__pd-epp-config.yaml": Loads(),
    "llmd-sched-520af47__deploy__config__probabilistic-admitter-epp-config.yaml": Loads(),
    "llmd-sched-520af47__deploy__config__sim-epp-config.yaml": Loads(),
    "llmd-sched-520af47__deploy__config__sim-epp-kvcache-config.yaml": Loads(),
    "llmd-sched-520af47__deploy__config__sim-epp-no-hit-lru.yaml": Loads(),
    "llmd-sched-520af47__deploy__config__sim-epp-tokenizer-vllm-http-config.yaml": Loads(),
    "llmd-sched-520af47__deploy__config__sim-pd-epp-config.yaml": Loads(),
    "llmd-sched-520af47__docs__architecture.md__2.yaml": Loads(),
    "llmd-sched-520af47__pkg__epp__framework__plugins__datalayer__source__models__README.md.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "llmd-sched-520af47__pkg__epp__framework__plugins__requestcontrol__requestattributereporter__README.md.yaml": Loads(
        "schedulingProfiles: none given; profile 'default' runs every configured filter, scorer and picker (n"
    ),
    "llmd-sched-520af47__pkg__epp__framework__plugins__requesthandling__parsers__README.md.yaml": Loads(),
    "llmd-sched-v0.2.0__deploy__config__epp-prefix-cache-tracking-config.yaml": Loads(
        "plugins[2].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-cache-scorer",
        "plugins[2].parameters: kvEventsConfig.zmqEndpoint not set: cache_tracking's default tcp://*:5557 is bound",
        "plugins[3].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-sched-v0.2.0__deploy__config__epp-prefix-estimate-config.yaml": Loads(),
    "llmd-sched-v0.3.0__deploy__config__epp-precise-prefix-cache-config.yaml": Loads(
        "plugins[3].type: 'kv-cache-scorer' is a deprecated name of 'kv-cache-utilization-scorer'",
    ),
    "llmd-sched-v0.3.0__deploy__config__sim-epp-kvcache-config.yaml": Loads(
        "plugins[0].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-cache-scorer",
    ),
    "llmd-sched-v0.3.0__deploy__config__sim-pd-epp-config.yaml": Loads(
        "plugins[0].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[1].parameters: hashBlockSize is deprecated: read as blockSize",
        "plugins[1].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
        "plugins[5].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[5].parameters: hashBlockSize (llm-d <= v0.5) is ignored: the prefix block size is a paramete",
        "plugins[5].parameters: threshold 10 (llm-d <= v0.5) is deprecated: read as decider prefix-based-pd-d",
    ),
    "llmd-sched-v0.4.0__deploy__config__epp-precise-prefix-cache-config.yaml": Loads(),
    "llmd-sched-v0.4.0__deploy__config__sim-epp-kvcache-config.yaml": Loads(
        "plugins[0].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-cache-scorer",
    ),
    "llmd-sched-v0.4.0__docs__disagg_pd.md.yaml": Loads(
        "plugins[2].parameters: hashBlockSize is deprecated: read as blockSize",
        "plugins[2].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
        "plugins[4].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[5].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[5].parameters: hashBlockSize (llm-d <= v0.5) is ignored: the prefix block size is a paramete",
        "plugins[5].parameters: threshold 0 (llm-d <= v0.5) is deprecated: read as decider always-disagg-pd-d",
    ),
    "llmd-sched-v0.5.0__deploy__config__pd-epp-config.yaml": Loads(
        "plugins[0].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[5].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[5].parameters: pd-profile-handler names no decider: read as an always-disagg-pd-decider (llm",
    ),
    "llmd-sched-v0.5.0__deploy__config__sim-epp-kvcache-config.yaml": Loads(
        "plugins[0].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as precise-prefix-cache-scorer",
    ),
    "llmd-sched-v0.5.0__deploy__config__sim-epp-no-hit-lru.yaml": Loads(
        "plugins[0].parameters: hashBlockSize is deprecated: read as blockSize",
        "plugins[0].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
    ),
    "llmd-sched-v0.5.0__deploy__config__sim-pd-epp-config.yaml": Refused(
        GO_REFUSES, "plugins[5].parameters.primaryPort: Input should be a valid integer"
    ),
    "llmd-sched-v0.5.0__docs__architecture.md__2.yaml": Loads(
        "plugins[0].parameters: hashBlockSize is deprecated: read as blockSize",
        "plugins[0].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
    ),
    "llmd-sched-v0.5.0__docs__disagg_pd.md.yaml": Loads(
        "plugins[2].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
        "plugins[4].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[5].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[5].parameters: hashBlockSize (llm-d <= v0.5) is ignored: the prefix block size is a paramete",
        "plugins[5].parameters: threshold 0 (llm-d <= v0.5) is deprecated: read as decider always-disagg-pd-d",
    ),
    "llmd-sched-v0.6.0__deploy__config__dp-epp-config.yaml": Loads(),
    "llmd-sched-v0.6.0__deploy__config__pd-epp-config.yaml": Refused(
        GO_REFUSES, "plugins[7].parameters.primaryPort: Input should be a valid integer"
    ),
    "llmd-sched-v0.6.0__deploy__config__sim-epp-config.yaml": Loads(
        "plugins[0].parameters: hashBlockSize is deprecated: read as blockSize",
        "plugins[0].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
    ),
    "llmd-sched-v0.6.0__deploy__config__sim-pd-epp-config.yaml": Refused(
        GO_REFUSES, "plugins[7].parameters.primaryPort: Input should be a valid integer"
    ),
    "llmd-sched-v0.6.0__docs__architecture.md__4.yaml": Loads(
        "plugins[0].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[1].parameters: hashBlockSize is deprecated: read as blockSize",
        "plugins[1].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
        "plugins[5].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[5].parameters: hashBlockSize (llm-d <= v0.5) is ignored: the prefix block size is a paramete",
        "plugins[5].parameters: threshold 10 (llm-d <= v0.5) is deprecated: read as decider prefix-based-pd-d",
    ),
    "llmd-sched-v0.6.0__docs__disagg_pd.md.yaml": Loads(
        "plugins[2].parameters: blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens 1 ",
        "plugins[4].type: 'prefill-header-handler' is a deprecated name of 'disagg-headers-handler'",
        "plugins[6].type: 'pd-profile-handler' is a deprecated name of 'disagg-profile-handler'",
        "plugins[6].parameters: deciderPluginName is deprecated: read as prefillDeciderPluginName",
    ),
    "llmd-sched-v0.7.0__deploy__config__epp-precise-prefix-cache-config.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__dp-epp-config.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__epp-config.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__epp-estimate-prefix-cache-config.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__epp-precise-prefix-cache-config.yaml": Loads(
        "plugins[0].type: 'tokenizer' is a deprecated name of 'token-producer'",
        "schedulingProfiles[0].plugins[1].pluginRef: plugin 'tokenizer' is a token-producer, which is not a",
    ),
    "llmd-sched-v0.8.0__deploy__config__pd-epp-config.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__sim-epd-epp-config.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__sim-epp-config.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__sim-epp-external-tokenizer-config.yaml": Loads(
        "plugins[0].type: 'tokenizer' is a deprecated name of 'token-producer'",
    ),
    "llmd-sched-v0.8.0__deploy__config__sim-epp-kvcache-config.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__sim-epp-no-hit-lru.yaml": Loads(),
    "llmd-sched-v0.8.0__deploy__config__sim-pd-epp-config.yaml": Loads(),
    "llmd-sched-v0.8.0__docs__architecture.md__2.yaml": Loads(),
    "llmd-sched-v0.8.0__docs__disaggregation.md__1.yaml": Loads(),
    "llmd-sched-v0.8.0__docs__disaggregation.md__2.yaml": Loads(),
}


def documents() -> list[str]:
    return sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "SOURCES.yaml")


def test_every_upstream_document_has_an_expected_outcome() -> None:
    assert documents() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_upstream_config(name: str) -> None:
    expected = EXPECTED[name]
    if isinstance(expected, Loads):
        config = load_config_file(CONFIGS / name)
        build_components(config, PluginContext())
        assert len(config.warnings) == len(expected.warnings), config.warnings
        for warning, start in zip(config.warnings, expected.warnings, strict=True):
            assert warning.startswith(start), warning
        return
    with pytest.raises(ConfigError) as caught:
        load_config_file(CONFIGS / name)
    lines = [
        line.strip() for line in str(caught.value).removeprefix("invalid EndpointPickerConfig:").splitlines()
    ]
    assert any(line.startswith(expected.message) for line in lines), str(caught.value)


def test_refusals_of_unavailable_types_say_what_they_are_and_what_to_use() -> None:
    for name, expected in EXPECTED.items():
        if isinstance(expected, Refused) and "is not available in this EPP" in expected.message:
            with pytest.raises(ConfigError) as caught:
                load_config_file(CONFIGS / name)
            line = next(line for line in str(caught.value).splitlines() if expected.message in line)
            assert "upstream, " in line and "; instead: " in line, line


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    loaded = sum(isinstance(e, Loads) for e in EXPECTED.values())
    with_warnings = sum(isinstance(e, Loads) and bool(e.warnings) for e in EXPECTED.values())
    refused = Counter(e.reason for e in EXPECTED.values() if isinstance(e, Refused))
    with capsys.disabled():
        print(
            f"\nupstream EndpointPickerConfigs: {len(EXPECTED)}; load: {loaded} ({with_warnings} with warnings)"
        )
        for reason in Reason:
            print(f"  refused, {reason.name} ({reason.value}): {refused[reason]}")
    doc = __doc__ or ""
    assert f"Counts ({len(EXPECTED)} documents): {loaded} load;" in doc
    readme = " ".join((CONFIGS.parents[3] / "README.md").read_text().split())
    assert f"Of the {len(EXPECTED)} configs" in readme and f"{loaded} load;" in readme
    assert f"{refused[Reason.MISSING]} are refused for a plugin missing here" in readme
    assert f"cannot run ({refused[Reason.SERVICE]})" in readme
    stated = re.findall(r"(\d+) (SERVICE|TEST_ONLY|DOCS|GO_REFUSES|OTHER_ISSUE|MISSING)", doc)
    assert {Reason[name]: int(count) for count, name in stated} == {r: refused[r] for r in Reason}


NONSTANDARD = CONFIGS.parent / "configs_nonstandard"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in NONSTANDARD.glob("*.yaml") if p.name != "SOURCES.yaml")
)
def test_upstream_snippets_with_another_api_version_are_refused_as_by_go(name: str) -> None:
    """Docs snippets with a typo'd, missing or future apiVersion: the Go EPP's decoder refuses them
    too; the error names the versions that load."""
    with pytest.raises(ConfigError) as caught:
        load_config_file(NONSTANDARD / name)
    assert "apiVersion: " in str(caught.value)
    assert "'inference.networking.x-k8s.io/v1alpha1' or 'llm-d.ai/v1alpha1'" in str(caught.value) or (
        "apiVersion: Field required" in str(caught.value)
    )
