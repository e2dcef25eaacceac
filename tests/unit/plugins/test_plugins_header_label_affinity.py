"""`header-label-affinity-scorer` (llm-d): endpoints labelled with the request header's value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from epp.plugins.header_label_affinity_scorer import HeaderLabelAffinityScorer
from tests.unit.plugin_helpers import endpoint, plugin, request

KEY = "disaggregatedset.x-k8s.io/slice"
POOL = [endpoint("a", labels={KEY: "s1"}), endpoint("b", labels={KEY: "s2"}), endpoint("c")]


def test_matching_label_scores_one() -> None:
    scorer = plugin(HeaderLabelAffinityScorer, {"headerName": "X-Disagg-Slice", "labelKey": KEY})
    assert scorer.score(request(headers={"x-disagg-slice": "s2"}), POOL) == [0.0, 1.0, 0.0]
    assert scorer.score(request(headers={"x-disagg-slice": ""}), POOL) == [0.0, 0.0, 0.0]
    assert scorer.score(request(), POOL) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "params", [{}, {"headerName": "h"}, {"labelKey": "k"}, {"headerName": "", "labelKey": "k"}]
)
def test_both_parameters_are_required(params: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        plugin(HeaderLabelAffinityScorer, params)
