"""Plugin types that exist upstream (GIE, llm-d) but that this EPP refuses, each with what it does
upstream, why it is refused here and what to use instead. The loader quotes the entry in its error,
so a config written for the Go EPP fails with an answer rather than "unknown type".

Test-only types from the Go loaders' own test fixtures (`test-*`, `mock-metrics-source`) and
illustrative placeholders from the docs (`custom-scorer`) are recognised too, so that their error
says so instead of listing every known type."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    SERVICE = "needs a service this EPP cannot run"
    TEST_ONLY = "a test-only type of the upstream Go tests"
    PLACEHOLDER = "an illustrative placeholder from the upstream docs"
    NOT_UPSTREAM = "registered by no GIE or llm-d release, so the Go EPPs refuse it too"


@dataclass(frozen=True)
class UnavailableType:
    reason: Reason
    upstream: str  # which project registers it and what it does there
    instead: str  # what to configure here

    def message(self, type_name: str) -> str:
        return (
            f"plugin type {type_name!r} is not available in this EPP ({self.reason.value}): upstream, "
            f"{self.upstream}; instead: {self.instead}"
        )


_LATENCY = (
    "use the load scorers (queue-scorer, kv-cache-utilization-scorer, token-load-scorer) "
    "and prefix-cache-scorer"
)
_MULTICLUSTER = "run one EPP per cluster's InferencePool"


def _entries() -> dict[str, UnavailableType]:
    svc = Reason.SERVICE
    table: dict[str, UnavailableType] = {}

    def add(names: tuple[str, ...], reason: Reason, upstream: str, instead: str) -> None:
        for name in names:
            table[name] = UnavailableType(reason, upstream, instead)

    add(
        ("predicted-latency-producer", "latency-scorer", "latency-slo-admitter", "slo-headroom-tier-filter"),
        svc,
        "GIE/llm-d's latency-predictor family: per-request TTFT/TPOT predictions from the "
        "latency-predictor training and prediction sidecars, used to score, tier and admit by SLO",
        _LATENCY,
    )
    add(
        ("predicted-latency-scorer", "slo-aware-routing"),
        svc,
        "GIE v1.2-v1.3 SLO-aware routing scorer over the latency-predictor sidecars' TTFT/TPOT predictions",
        _LATENCY,
    )
    add(
        (
            "multicluster-file-discovery",
            "multicluster-metrics-data-source",
            "multicluster-metrics-extractor",
            "multicluster-session-affinity-filter",
            "multicluster-kv-cache-utilization-scorer",
            "multicluster-queue-scorer",
            "multicluster-prefix-cache-scorer",
            "multicluster-approx-prefix-cache-producer",
        ),
        svc,
        "llm-d's multi-cluster routing: endpoints and metrics of remote clusters' EPPs, scored as one pool",
        _MULTICLUSTER,
    )
    add(
        ("dcgm-data-source", "dcgm-extractor"),
        svc,
        "llm-d alpha data source scraping NVIDIA DCGM exporter GPU metrics (power, utilisation, memory) "
        "per endpoint, for GPU-aware scoring",
        "kv-cache-utilization-scorer and the queue scorers over the model servers' own metrics",
    )
    add(
        ("disaggregatedset-rollout-pod-extractor",),
        Reason.NOT_UPSTREAM,
        "the pod handler disaggregatedset-rollout-screener registers for itself; llm-d registers no "
        "plugin type of that name",
        "disaggregatedset-rollout-screener alone (it watches the pods it needs)",
    )
    add(
        ("queue-cache-scorer",),
        Reason.NOT_UPSTREAM,
        "named only by an llm-d-benchmark v0.5 preset; no GIE or llm-d scheduler release has it",
        "queue-scorer and kv-cache-utilization-scorer",
    )
    add(
        ("header-phase-profile-handler",),
        Reason.NOT_UPSTREAM,
        "the profile handler of an llm-d-router pull-request build (#2134) that llm-d's coordinator-epd "
        "guide pins: one profile per call, named by the coordinator's EPP-Phase header; llm-d-router "
        "v0.10.0 and main ebab687 register header-profile-handler for that job (header EPP-Profile)",
        "header-profile-handler with parameters {headerName: EPP-Phase}",
    )
    add(
        ("lmetric-scorer",),
        Reason.NOT_UPSTREAM,
        "a scorer an llm-d guide overlay (precise-prefix-cache-routing/router/lmetric.values.yaml) asks "
        "for from an unreleased router image; llm-d-router v0.10.0 and main ebab687 register no such type",
        "prefix-cache-scorer with the precise producer, and the load scorers",
    )
    add(
        ("mock-metrics-source",),
        Reason.TEST_ONLY,
        "a stand-in metrics source registered only by the Go config-loader tests",
        "metrics-data-source",
    )
    add(
        ("custom-scorer",),
        Reason.PLACEHOLDER,
        "the docs' example of a user-written plugin",
        "a real scorer type",
    )
    return table


UNAVAILABLE_TYPES: dict[str, UnavailableType] = _entries()

TEST_ONLY_FEATURE_GATES = frozenset({"test-feature-gate"})


def unavailable(type_name: str) -> UnavailableType | None:
    """The entry for a type upstream knows and this EPP refuses (None: never heard of it)."""
    entry = UNAVAILABLE_TYPES.get(type_name)
    if entry is None and type_name.startswith("test-"):
        return UnavailableType(
            Reason.TEST_ONLY,
            "a type registered only by the Go config-loader tests' fixtures (test-one, test-picker, ...)",
            "a real plugin type",
        )
    return entry
