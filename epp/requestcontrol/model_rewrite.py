"""InferenceModelRewrite (GIE v1alpha2): the model a request names is sent upstream as another,
chosen by weight among a rule's targets (aliases, canary and blue-green LoRA rollouts).

Precedence as GIE's datastore keeps it: a rule whose `matches` name the request's model exactly
wins over a generic rule (no `matches`); among several, the rule of the oldest object wins (then
the object's name, so equal timestamps still give one answer). A rewrite overrides the
`x-gateway-model-name-rewrite` header."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from epp.params.strict import StrictModel

KIND = "InferenceModelRewrite"
# What the CRDs serve: GIE's, and llm-d-router's, which took the API over in 2026.
API_VERSIONS = ("inference.networking.x-k8s.io/v1alpha2", "llm-d.ai/v1alpha2")
DEFAULT_POOL_GROUP = "inference.networking.k8s.io"


class _ModelMatch(StrictModel):
    type: Literal["Exact"] = "Exact"
    value: str = Field(min_length=1)


class _Match(StrictModel):
    model: _ModelMatch


class _Target(StrictModel):
    model_rewrite: str = Field(min_length=1)
    weight: int = Field(default=0, ge=0, le=1_000_000)  # unset: 0, as Go reads it


class _Rule(StrictModel):
    matches: list[_Match] = Field(default_factory=list)
    targets: list[_Target] = Field(min_length=1)


class _PoolRef(StrictModel):
    group: str = DEFAULT_POOL_GROUP
    kind: str = "InferencePool"
    name: str = Field(min_length=1)


class _Spec(StrictModel):
    pool_ref: _PoolRef
    rules: list[_Rule]


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")  # server-set fields
    name: str = Field(min_length=1)
    creation_timestamp: str = Field(default="", alias="creationTimestamp")


class ModelRewriteObject(BaseModel):
    """An InferenceModelRewrite as Kubernetes stores it; status and server fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    api_version: str = Field(alias="apiVersion")
    kind: Literal["InferenceModelRewrite"]
    metadata: _Metadata
    spec: _Spec


@dataclass(frozen=True)
class RewriteRule:
    rewrite_name: str  # the InferenceModelRewrite it came from
    models: frozenset[str]  # exact matches; empty = any model
    targets: tuple[tuple[str, int], ...]  # (model, weight)


@dataclass(frozen=True)
class ModelRewrite:
    name: str
    created: str  # RFC 3339, so it sorts by time; "" (no timestamp, e.g. a file) sorts first
    pool_name: str
    pool_group: str
    rules: tuple[RewriteRule, ...]


def parse_model_rewrite(obj: Mapping[str, Any]) -> ModelRewrite:
    """From a Kubernetes object (a dict); raises pydantic.ValidationError or ValueError."""
    parsed = ModelRewriteObject.model_validate(obj)
    if parsed.api_version not in API_VERSIONS:
        raise ValueError(f"apiVersion: expected {' or '.join(API_VERSIONS)}, got {parsed.api_version!r}")
    name = parsed.metadata.name
    rules = tuple(
        RewriteRule(
            name,
            frozenset(m.model.value for m in rule.matches),
            tuple((t.model_rewrite, t.weight) for t in rule.targets),
        )
        for rule in parsed.spec.rules
    )
    ref = parsed.spec.pool_ref
    return ModelRewrite(name, parsed.metadata.creation_timestamp, ref.name, ref.group, rules)


class ModelRewrites:
    """The rules in force, indexed by model for a lookup per request."""

    def __init__(self, rewrites: Iterable[ModelRewrite] = (), rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._exact: dict[str, RewriteRule] = {}
        self._generic: RewriteRule | None = None
        self.replace(rewrites)

    def replace(self, rewrites: Iterable[ModelRewrite]) -> None:
        exact: dict[str, RewriteRule] = {}
        generic: RewriteRule | None = None
        for rewrite in sorted(rewrites, key=lambda r: (r.created, r.name)):
            for rule in rewrite.rules:
                if not rule.models:
                    generic = generic or rule
                for model in rule.models:
                    exact.setdefault(model, rule)
        self._exact, self._generic = exact, generic

    def __bool__(self) -> bool:
        return bool(self._exact) or self._generic is not None

    def choose(self, model: str) -> tuple[str, str] | None:
        """(rewrite name, target model) for a request naming `model`, or None to leave it."""
        rule = self._exact.get(model, self._generic)
        if rule is None:
            return None
        return rule.rewrite_name, self._pick(rule.targets)

    def _pick(self, targets: Sequence[tuple[str, int]]) -> str:
        total = sum(weight for _, weight in targets)
        if total == 0:
            return self._rng.choice(targets)[0]
        point = self._rng.randrange(total)
        for model, weight in targets:
            point -= weight
            if point < 0:
                return model
        return targets[-1][0]


def for_pool(rewrites: Iterable[ModelRewrite], pool_name: str, pool_group: str) -> list[ModelRewrite]:
    """The rewrites whose poolRef names this pool (GIE ignores the others)."""
    return [r for r in rewrites if r.pool_name == pool_name and r.pool_group == pool_group]
