"""Scalar endpoint attributes as llm-d's endpoint-attribute filter and scorer name them: an
attribute key plus, optionally, the producer that publishes it. Here the only producer is
`core-metrics-extractor`, whose `engineConfigs[].customMetrics` keep a metric per endpoint under
an attribute key (EndpointMetrics.scalars)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import Endpoint
from epp.framework import ParameterUpgrade, PluginParams

PRODUCER = "core-metrics-extractor"


class AttributeParams(PluginParams):
    """The `producer` parameter both plugins take; naming one nothing here stands for warns."""

    producer: str | None = None

    @classmethod
    def upgrade(cls, raw: Mapping[str, Any], type_name: str = "") -> ParameterUpgrade:
        upgrade = super().upgrade(raw, type_name)
        producer = raw.get("producer")
        warning = producer_warning(producer if isinstance(producer, str) else None)
        if warning:
            upgrade.warnings.append(warning)
        return upgrade


def check_attribute(plugin: str, attribute: str, producer: str | None) -> None:
    """llm-d's ResolveConfiguredKey: an attribute with a `/` and no producer is the combined
    `attribute/producer` spelling, which must be split."""
    if producer is None and "/" in attribute:
        head, _, tail = attribute.rpartition("/")
        raise ValueError(
            f"{plugin}: attribute {attribute!r} contains '/' but no producer is set; the attribute and its "
            f"producer are separate parameters: split it into attribute {head!r} and producer {tail!r}, or "
            "set producer explicitly if the name itself contains '/'"
        )


def producer_warning(producer: str | None) -> str | None:
    """Why an endpoint will never have the attribute (a producer nothing here stands for)."""
    if producer is None or producer == PRODUCER:
        return None
    return (
        f"producer {producer!r} publishes no endpoint attributes in this EPP (only {PRODUCER}'s "
        "customMetrics do): every endpoint counts as missing the attribute"
    )


def read(endpoint: Endpoint, attribute: str, producer: str | None) -> float | None:
    if producer is not None and producer != PRODUCER:
        return None
    return endpoint.metrics.scalars.get(attribute)
