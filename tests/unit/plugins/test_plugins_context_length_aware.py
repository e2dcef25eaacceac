"""`context-length-aware` (llm-d): pods labelled with the context lengths they are sized for."""

from __future__ import annotations

import pytest

from epp.config.loader import load_config
from epp.plugins.context_length_aware import ContextLengthAware, parse_range, range_score
from tests.unit.plugin_helpers import endpoint, plugin, request

LABEL = "llm-d.ai/context-length-range"
SHORT = endpoint("short", labels={LABEL: "0-2048"})
LONG = endpoint("long", labels={LABEL: "2048-131072"})
ANY = endpoint("any")
BROKEN = endpoint("broken", labels={LABEL: "big"})
POOL = [SHORT, LONG, ANY, BROKEN]


def test_ranges() -> None:
    assert parse_range("0 - 2048") == (0, 2048)
    assert parse_range("9-1") is None and parse_range("1-2-3") is None and parse_range("x-1") is None
    assert range_score(5, 5, 5) == 1.0
    # inside: 0.3 + 0.7 * (0.7 / (1 + 0.2) + 0.3 * 0.5)
    assert range_score(1000, 0, 2000) == pytest.approx(0.3 + 0.7 * (0.7 / 1.2 + 0.15))
    assert range_score(3000, 0, 2000) == pytest.approx(0.3 / 2.0)  # 1000 tokens past the range


def test_scores_prefer_the_fitting_range() -> None:
    short_prompt, long_prompt = request("x" * 400), request("x" * 40_000)  # 100 and 10,000 tokens
    scorer = plugin(ContextLengthAware)
    short_scores = scorer.score(short_prompt, POOL)
    assert short_scores[0] > short_scores[1] and short_scores[2:] == [0.5, 0.0]
    long_scores = scorer.score(long_prompt, POOL)
    assert long_scores[1] > long_scores[2] > long_scores[0]


def test_filtering_only_when_enabled() -> None:
    long_prompt = request("x" * 40_000)
    assert plugin(ContextLengthAware).filter(long_prompt, POOL) == POOL
    kept = plugin(ContextLengthAware, {"enableFiltering": True}).filter(long_prompt, POOL)
    assert [e.name for e in kept] == ["long", "any"]


def test_in_a_profile_it_filters_and_scores() -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- {type: context-length-aware, parameters: {label: x/range, enableFiltering: true}}\n"
    )
    (profile,) = load_config(text).profiles
    assert profile.filters == ("context-length-aware",) and profile.scorers == (
        ("context-length-aware", 1.0),
    )
