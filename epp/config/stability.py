"""llm-d router's stability levels (v0.10): it registers some plugin types as Alpha and refuses to
start on a config using one unless `--allow-experimental-plugins` is given. This EPP runs them
either way; without the flag it says which ones the router would refuse, and `--strict-config`
refuses them as the router does. GIE has no stability levels, so only these llm-d types count."""

from __future__ import annotations

from epp.config.model import PickerConfig

# The router's Alpha registrations (cmd/epp/runner/runner.go at llm-d-router v0.10.0 and main
# ebab687) that this EPP implements; everything else it registers is Beta.
LLMD_ALPHA_TYPES = frozenset(
    {
        "agent-identity",
        "burst-prefix-cache-producer",
        "disaggregatedset-rollout-screener",
        "endpoint-attribute-filter",
        "endpoint-attribute-scorer",
        "header-label-affinity-scorer",
        "header-profile-handler",
        "p2p-source-producer",
        "priority-holdback-policy",
        "priority-then-time-eviction-order-policy",
        "session-affinity-filter",
        "session-affinity-scorer",
        "sheddable-eviction-filter",
        "soft-reflective-ceiling-policy",
        "topology-affinity-filter",
        "topology-affinity-scorer",
        "topology-extractor",
        "utilization-filter",
    }
)


def experimental_plugins(config: PickerConfig) -> list[str]:
    """`name (type)` of every configured plugin whose type llm-d's router registers as Alpha."""
    alpha = (name for name, spec in config.plugins.items() if spec.type_name in LLMD_ALPHA_TYPES)
    return [f"{name} ({config.plugins[name].type_name})" for name in alpha]


def check_experimental(config: PickerConfig, allowed: bool, strict: bool) -> str | None:
    """None when nothing needs saying; else the message: an error under `strict`, else a warning."""
    found = [] if allowed else experimental_plugins(config)
    if not found:
        return None
    message = (
        f"plugins {', '.join(found)} are Alpha in llm-d's router, which refuses to start on them "
        "without --allow-experimental-plugins"
    )
    if strict:
        raise ValueError(f"{message} (--strict-config refuses them too)")
    return f"{message}; this EPP runs them"
