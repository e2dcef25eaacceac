"""`disaggregatedset-rollout-screener` (llm-d, alpha): keeps a request's prefill and decode on one
revision of a DisaggregatedSet while it rolls out, before any scheduling profile runs.

Revision gating (`revisionGating.mode` `sum` or `max-role`): from the Ready pods of `scope`
(watched through a `k8s-notification-source` for pods), a revision with no Ready pod for one of
`requireRoles.values` takes no traffic; otherwise one revision is drawn per request, weighted by
its Ready pods over the required roles (`sum`) or by its Ready pods of the role with the most of
them over all covered revisions (`max-role`, ties to the first listed), and only its endpoints
stay candidates. `disabled` skips that. A request carrying a `strict` selector's header keeps only
endpoints whose label equals it, with no draw; `prefer` selectors are only stamped (a
`header-label-affinity-scorer` applies the preference). Every selector's header is stamped on the
response from the serving endpoint's label. No candidate left: 503. Until the first pods are
heard of, gating refuses every request (503), as llm-d does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from epp.datalayer import KubernetesObjectObserver
from epp.datalayer.k8sobjects import POD, ObjectEvent, labels_of, pod_ready
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.headers import LB_NAMESPACE, SERVED_KEY
from epp.params.labelselector import LabelSelector, parse_selector
from epp.requestcontrol import ResponseHeaderProcessor, Screener
from epp.requests import InferenceRequest
from epp.scheduling.types import SchedulingResult

DEFAULT_REVISION_LABEL = "disaggregatedset.x-k8s.io/revision"
DEFAULT_ROLE_LABEL = "disaggregatedset.x-k8s.io/role"


class Scope(PluginParams):
    label_selector: str = Field(min_length=1)

    @field_validator("label_selector")
    @classmethod
    def _parses(cls, text: str) -> str:
        parse_selector(text)
        return text


class HeaderSelector(PluginParams):
    name: str = Field(min_length=1)
    header_name: str = Field(min_length=1)
    label_key: str = Field(min_length=1)
    mode: Literal["strict", "prefer"]


class RequireRoles(PluginParams):
    values: list[str]


class RevisionGating(PluginParams):
    revision_label_key: str = ""
    role_label_key: str = ""
    mode: Literal["sum", "max-role", "disabled"]
    require_roles: RequireRoles | None = None

    @model_validator(mode="after")
    def _roles(self) -> RevisionGating:
        if self.mode == "disabled":
            return self
        if self.require_roles is None:
            raise ValueError(f"revisionGating.requireRoles is required when revisionGating.mode={self.mode}")
        roles = self.require_roles.values
        if not roles:
            raise ValueError("revisionGating.requireRoles.values must contain at least one role")
        for index, role in enumerate(roles):
            if not role:
                raise ValueError(f"revisionGating.requireRoles.values[{index}] must not be empty")
            if role in roles[:index]:
                raise ValueError(f"revisionGating.requireRoles.values contains duplicate role {role!r}")
        return self

    @property
    def active(self) -> bool:
        return self.mode != "disabled"


class RolloutScreenerParams(PluginParams):
    scope: Scope
    header_selectors: list[HeaderSelector] = []
    revision_gating: RevisionGating

    @model_validator(mode="after")
    def _unique_selectors(self) -> RolloutScreenerParams:
        names: set[str] = set()
        headers: set[str] = set()
        for selector in self.header_selectors:
            if selector.name in names:
                raise ValueError(f"headerSelectors: duplicate name {selector.name!r}")
            header = selector.header_name.lower()
            if header in headers:
                raise ValueError(f"headerSelectors: duplicate headerName {header!r}")
            names.add(selector.name)
            headers.add(header)
        return self


def revision_shares(
    role_counts: Mapping[str, Mapping[str, int]], roles: Sequence[str], mode: str
) -> dict[str, float]:
    """Each revision's share of traffic (0 for one missing a required role)."""
    covered = {rev: counts for rev, counts in role_counts.items() if all(counts.get(r, 0) for r in roles)}
    if mode == "max-role":
        totals = [sum(counts.get(role, 0) for counts in covered.values()) for role in roles]
        dominant = roles[totals.index(max(totals))] if totals else ""
        weights = {rev: counts.get(dominant, 0) for rev, counts in covered.items()}
    else:
        weights = {rev: sum(counts.get(role, 0) for role in roles) for rev, counts in covered.items()}
    total = sum(weights.values())
    return {rev: (weights.get(rev, 0) / total if total else 0.0) for rev in role_counts}


def pick_weighted(shares: Mapping[str, float], draw: float) -> str:
    """The revision a uniform `draw` in [0, 1) lands on, revisions in name order ("" when none)."""
    revisions = sorted(rev for rev, share in shares.items() if share > 0)
    total = sum(shares[rev] for rev in revisions)
    cumulative = 0.0
    for revision in revisions:
        cumulative += shares[revision]
        if draw * total < cumulative:
            return revision
    return revisions[-1] if revisions else ""


@register
class DisaggregatedSetRolloutScreener(Plugin, Screener, ResponseHeaderProcessor, KubernetesObjectObserver):
    type_name = "disaggregatedset-rollout-screener"
    Params = RolloutScreenerParams
    watched_kind = POD

    def __init__(self, name: str, params: RolloutScreenerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        gating = params.revision_gating
        self.gating = gating
        self.scope: LabelSelector = parse_selector(params.scope.label_selector)
        self.revision_label = gating.revision_label_key or DEFAULT_REVISION_LABEL
        self.role_label = gating.role_label_key or DEFAULT_ROLE_LABEL
        self.roles = tuple(gating.require_roles.values) if gating.require_roles else ()
        self.selectors = [
            (s.name, s.header_name.lower(), s.label_key, s.mode) for s in params.header_selectors
        ]
        self.strict = [s for s in self.selectors if s[3] == "strict"]
        self._rng = context.rng
        self._no_match = context.metrics.rollout_no_match
        self._share = context.metrics.rollout_share
        self._pods: dict[tuple[str, str], tuple[str, str]] = {}  # (namespace, name) -> (revision, role)
        self.role_counts: dict[str, dict[str, int]] = {}
        self.shares: dict[str, float] = {}

    @classmethod
    def watches_objects(cls, params: Any) -> bool:
        assert isinstance(params, RolloutScreenerParams)
        return params.revision_gating.active

    # --- pods ----------------------------------------------------------------------------------

    def object_event(self, event: ObjectEvent) -> None:
        pod = event.obj
        labels = labels_of(pod)
        revision, role = labels.get(self.revision_label, ""), labels.get(self.role_label, "")
        counted = (
            not event.deleted and pod_ready(pod) and self.scope.matches(labels) and bool(revision and role)
        )
        if counted:
            self._pods[event.key] = (revision, role)
        elif self._pods.pop(event.key, None) is None:
            return
        self._rebuild()

    def _rebuild(self) -> None:
        counts: dict[str, dict[str, int]] = {}
        for revision, role in self._pods.values():
            per_role = counts.setdefault(revision, {})
            per_role[role] = per_role.get(role, 0) + 1
        shares = revision_shares(counts, self.roles, self.gating.mode)
        gauge = self._share
        for gone in self.shares.keys() - shares.keys():
            gauge.remove(self.type_name, self.name, self.gating.mode, gone)
        for revision, share in shares.items():
            gauge.labels(self.type_name, self.name, self.gating.mode, revision).set(share)
        self.role_counts, self.shares = counts, shares

    # --- requests ------------------------------------------------------------------------------

    def screen(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> Sequence[Endpoint]:
        kept = candidates
        if self.gating.active:
            shares = self.shares
            seen = {e.labels.get(self.revision_label, "") for e in kept}
            allowed = {rev: shares[rev] for rev in seen if shares.get(rev, 0.0) > 0}
            headers = request.headers
            chosen = (
                ""
                if any(headers.get(s[1]) for s in self.strict)
                else pick_weighted(allowed, self._rng.random())
            )
            kept = [
                e
                for e in kept
                if e.labels.get(self.revision_label, "") in allowed
                and (not chosen or e.labels.get(self.revision_label) == chosen)
            ]
            if not kept:
                return kept
        for name, header, label, _ in self.strict:
            wanted = request.headers.get(header)
            if not wanted:
                continue
            kept = [e for e in kept if e.labels.get(label) == wanted]
            if not kept:
                self._no_match.labels(self.type_name, self.name, name).inc()
                return kept
        return kept

    def response_headers(
        self, request: InferenceRequest, result: SchedulingResult, metadata: Mapping[str, Mapping[str, Any]]
    ) -> None:
        served = _served(result, metadata)
        if served is None:
            return
        for _, header, label, _ in self.selectors:
            value = served.labels.get(label)
            if value:
                result.response_headers[header] = value


def _served(result: SchedulingResult, metadata: Mapping[str, Mapping[str, Any]]) -> Endpoint | None:
    """The target the gateway says served the request, else the primary."""
    targets = result.targets
    hostport = metadata.get(LB_NAMESPACE, {}).get(SERVED_KEY)
    return next((e for e in targets if e.hostport == hostport), targets[0] if targets else None)
