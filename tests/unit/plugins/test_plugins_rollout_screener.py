"""`disaggregatedset-rollout-screener`: revision coverage and weighted draw from pod events, strict
header screening, response stamping, and the director's 503 when nothing is left."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datalayer.k8sobjects import ObjectEvent
from epp.datastore import Datastore, Endpoint
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.params.strict import ConfigError
from epp.plugins.disaggregatedset_rollout_screener import (
    DisaggregatedSetRolloutScreener,
    pick_weighted,
    revision_shares,
)
from epp.requests import RequestError
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.k8s_double.objects import pod
from tests.unit.plugin_helpers import endpoint, plugin, request

REV, ROLE, SET = (
    "disaggregatedset.x-k8s.io/revision",
    "disaggregatedset.x-k8s.io/role",
    "disaggregatedset.x-k8s.io/name",
)
PARAMS: dict[str, Any] = {
    "scope": {"labelSelector": f"{SET}=my-set"},
    "headerSelectors": [
        {"name": "revision", "headerName": "X-Disagg-Revision", "labelKey": REV, "mode": "strict"},
        {"name": "slice", "headerName": "x-disagg-slice", "labelKey": "slice", "mode": "prefer"},
    ],
    "revisionGating": {"mode": "max-role", "requireRoles": {"values": ["prefill", "decode"]}},
}


def screener(
    params: dict[str, Any] | None = None, metrics: EppMetrics | None = None
) -> DisaggregatedSetRolloutScreener:
    context = PluginContext(metrics or EppMetrics(), random.Random(0))
    return plugin(DisaggregatedSetRolloutScreener, params or PARAMS, context)


def member(name: str, revision: str, role: str, ready: bool = True, in_set: str = "my-set") -> dict[str, Any]:
    return pod(name, labels={SET: in_set, REV: revision, ROLE: role}, ready=ready)


def heard(s: DisaggregatedSetRolloutScreener, *pods: dict[str, Any]) -> None:
    for obj in pods:
        s.object_event(ObjectEvent(False, obj))


def backend(name: str, revision: str, address: str = "10.0.0.1", **labels: str) -> Endpoint:
    return endpoint(name, address=address, labels={REV: revision, **labels})


def test_upstream_readme_example_shares() -> None:
    counts = {"A": {"prefill": 2, "decode": 9}, "B": {"prefill": 1, "decode": 1}}
    assert revision_shares(counts, ["prefill", "decode"], "max-role") == pytest.approx({"A": 0.9, "B": 0.1})
    assert revision_shares(counts, ["prefill", "decode"], "sum") == pytest.approx({"A": 11 / 13, "B": 2 / 13})
    # a revision missing a role has share 0 and does not count towards the dominant role
    counts["C"] = {"decode": 50}
    assert revision_shares(counts, ["prefill", "decode"], "max-role") == pytest.approx(
        {"A": 0.9, "B": 0.1, "C": 0}
    )
    # equal totals: the first listed role wins
    even = {"A": {"prefill": 3, "decode": 1}, "B": {"prefill": 1, "decode": 3}}
    assert revision_shares(even, ["decode", "prefill"], "max-role") == pytest.approx({"A": 0.25, "B": 0.75})


def test_pick_weighted_walks_revisions_in_name_order() -> None:
    shares = {"B": 0.25, "A": 0.75}
    assert [pick_weighted(shares, d) for d in (0.0, 0.74, 0.75, 0.99)] == ["A", "A", "B", "B"]
    assert pick_weighted({}, 0.5) == ""


def test_pods_in_scope_and_ready_are_counted_and_deletions_forgotten() -> None:
    s = screener()
    heard(
        s,
        member("p-a", "A", "prefill"),
        member("d-a", "A", "decode"),
        member("d-a2", "A", "decode", ready=False),
        member("other", "A", "decode", in_set="another-set"),
        pod("unlabelled", labels={SET: "my-set"}),
    )
    assert s.role_counts == {"A": {"prefill": 1, "decode": 1}}
    assert s.shares == {"A": 1.0}
    heard(s, member("d-a2", "A", "decode"))  # became Ready
    assert s.role_counts == {"A": {"prefill": 1, "decode": 2}}
    s.object_event(ObjectEvent(True, member("p-a", "A", "prefill")))
    assert s.role_counts == {"A": {"decode": 2}} and s.shares == {"A": 0.0}


def test_one_revision_per_request_in_proportion_to_its_dominant_role() -> None:
    s = screener()
    heard(s, member("p-a", "A", "prefill"), member("p-b", "B", "prefill"))
    heard(s, *(member(f"d-a{i}", "A", "decode") for i in range(3)), member("d-b", "B", "decode"))
    candidates = [backend("a1", "A"), backend("a2", "A"), backend("b1", "B"), backend("x", "")]
    picked = {"A": 0, "B": 0}
    for _ in range(2000):
        kept = s.screen(request(), candidates)
        revisions = {e.labels[REV] for e in kept}
        assert len(revisions) == 1
        picked[revisions.pop()] += 1
    assert picked["A"] / 2000 == pytest.approx(0.75, abs=0.04)
    assert [e.name for e in s.screen(request(headers={"x-disagg-revision": "B"}), candidates)] == ["b1"]


def test_uncovered_or_unknown_revisions_fail_closed() -> None:
    s = screener()
    candidates = [backend("a1", "A")]
    assert s.screen(request(), candidates) == []  # no pods heard of yet
    heard(s, member("d-a", "A", "decode"))  # no prefill pod
    assert s.screen(request(), candidates) == []
    heard(s, member("p-a", "A", "prefill"))
    assert [e.name for e in s.screen(request(), candidates)] == ["a1"]


def test_strict_header_with_no_match_is_counted_and_keeps_nothing() -> None:
    metrics = EppMetrics()
    s = screener({**PARAMS, "revisionGating": {"mode": "disabled"}}, metrics)
    candidates = [backend("a1", "A"), backend("b1", "B")]
    assert s.screen(request(), candidates) == candidates  # gating off, no header
    assert s.screen(request(headers={"x-disagg-revision": "C"}), candidates) == []
    labels = {"plugin_type": s.type_name, "plugin_name": s.name, "selector": "revision"}
    name = "llm_d_epp_disaggregatedset_strict_header_no_match_total"
    assert metrics.registry.get_sample_value(name, labels) == 1


def test_share_gauge_follows_revisions_and_drops_gone_ones() -> None:
    metrics = EppMetrics()
    s = screener(PARAMS, metrics)
    heard(s, member("p-a", "A", "prefill"), member("d-a", "A", "decode"), member("p-b", "B", "prefill"))

    def share(revision: str) -> float | None:
        labels = {"plugin_type": s.type_name, "plugin_name": s.name, "mode": "max-role", "revision": revision}
        return metrics.registry.get_sample_value("llm_d_epp_disaggregatedset_revision_gating_share", labels)

    assert (share("A"), share("B")) == (1.0, 0.0)
    s.object_event(ObjectEvent(True, member("p-b", "B", "prefill")))
    assert (share("A"), share("B")) == (1.0, None)


def test_the_director_answers_503_when_screeners_leave_no_candidate() -> None:
    config = load_config(
        f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: disaggregatedset-rollout-screener
  parameters:
    scope: {{labelSelector: "{SET}=my-set"}}
    revisionGating: {{mode: sum, requireRoles: {{values: [prefill, decode]}}}}
- type: max-score-picker
"""
    )
    datastore = Datastore()
    datastore.upsert(backend("a1", "A").spec)
    director, _ = build_director(config, datastore, PluginContext())
    with pytest.raises(RequestError) as refused:
        director.route(request())
    assert refused.value.status == 503
    assert refused.value.message == "screeners eliminated all endpoint candidates"


def test_response_stamps_every_selector_from_the_serving_endpoint() -> None:
    s = screener()
    primary, fallback = backend("a1", "A", slice="s1"), backend("b1", "B", "10.0.0.2", slice="s2")
    result = SchedulingResult({"decode": ProfileResult([primary, fallback])}, "decode")
    s.response_headers(
        request(), result, {"envoy.lb": {"x-gateway-destination-endpoint-served": "10.0.0.2:8000"}}
    )
    assert result.response_headers == {"x-disagg-revision": "B", "x-disagg-slice": "s2"}
    result = SchedulingResult({"decode": ProfileResult([primary])}, "decode")
    s.response_headers(request(), result, {})
    assert result.response_headers == {"x-disagg-revision": "A", "x-disagg-slice": "s1"}


def test_the_pod_watch_is_wanted_only_with_gating_on() -> None:
    on = load_config(_config(PARAMS))
    assert on.data_sources == {"rollout/pod": ("rollout",)}
    assert on.plugins["rollout/pod"].type_name == "k8s-notification-source"
    off = load_config(_config({**PARAMS, "revisionGating": {"mode": "disabled"}}))
    assert off.data_sources == {}


def _config(params: dict[str, Any]) -> str:
    return f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {{type: disaggregatedset-rollout-screener, name: rollout, parameters: {json.dumps(params)}}}
- type: max-score-picker
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scope": {"labelSelector": "a in x"}}, "is not a valid label selector"),
        ({"scope": {}}, "scope.labelSelector: Field required"),
        (
            {"revisionGating": {"mode": "sum"}},
            "revisionGating.requireRoles is required when revisionGating.mode=sum",
        ),
        ({"revisionGating": {"mode": "rolling"}}, "Input should be 'sum', 'max-role' or 'disabled'"),
        (
            {"revisionGating": {"mode": "sum", "requireRoles": {"values": []}}},
            "revisionGating.requireRoles.values must contain at least one role",
        ),
        (
            {"revisionGating": {"mode": "sum", "requireRoles": {"values": ["a", "a"]}}},
            "revisionGating.requireRoles.values contains duplicate role 'a'",
        ),
        (
            {
                "headerSelectors": [
                    PARAMS["headerSelectors"][0],
                    {**PARAMS["headerSelectors"][1], "name": "revision"},
                ]
            },
            "headerSelectors: duplicate name 'revision'",
        ),
        (
            {
                "headerSelectors": [
                    PARAMS["headerSelectors"][0],
                    {**PARAMS["headerSelectors"][1], "headerName": "x-disagg-REVISION"},
                ]
            },
            "headerSelectors: duplicate headerName 'x-disagg-revision'",
        ),
        (
            {"headerSelectors": [{**PARAMS["headerSelectors"][0], "mode": "soft"}]},
            "Input should be 'strict' or 'prefer'",
        ),
    ],
)
def test_bad_parameters_are_config_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config({**PARAMS, **change}))
    assert message in str(caught.value)
