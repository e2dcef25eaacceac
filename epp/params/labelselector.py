"""Kubernetes label selectors in their string form (`labels.Parse` in Go): comma-separated
requirements, all of which must hold: `k=v` / `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
`k` (exists) and `!k` (does not exist)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_KEY = r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_TERM = re.compile(
    rf"\s*(?:(?P<not>!)\s*(?P<absent>{_KEY})"
    rf"|(?P<key>{_KEY})\s*(?:(?P<op>==|=|!=)\s*(?P<value>{_VALUE})"
    rf"|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?)\s*(?:,|$)"
)
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # a matchExpressions operator: In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            return value is None or value not in self.values
        if self.operator == "Exists":
            return value is not None
        return value is None


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def parse_selector(text: str) -> LabelSelector:
    """The selector `text` says; ValueError names the first part that is not a requirement.
    An empty string selects everything."""
    requirements: list[Requirement] = []
    position = 0
    while position < len(text.rstrip()):
        match = _TERM.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"{text!r} is not a valid label selector (at {text[position:]!r})")
        requirements.append(_requirement(text, match))
        position = match.end()
    return LabelSelector(tuple(requirements))


def _requirement(text: str, match: re.Match[str]) -> Requirement:
    if match["absent"]:
        return Requirement(match["absent"], "DoesNotExist")
    key = match["key"]
    if match["op"]:
        operator = "NotIn" if match["op"] == "!=" else "In"
        return Requirement(key, operator, frozenset({match["value"]}))
    if match["set"]:
        values = [v.strip() for v in match["values"].split(",")]
        if not all(v and _VALUE_ONLY.match(v) for v in values):
            raise ValueError(f"{text!r} is not a valid label selector (values of {key!r})")
        return Requirement(key, "In" if match["set"] == "in" else "NotIn", frozenset(values))
    return Requirement(key, "Exists")
