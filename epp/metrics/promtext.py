"""Cheap extraction of a few series from Prometheus text exposition.

A model server's /metrics page is tens of kilobytes, mostly histograms the EPP never reads; a full
parser would cost more than the scrape. One compiled regex finds only the wanted families' sample
lines (C speed); labels are parsed only on those lines."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
_SPEC = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_UNQUOTED_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*\"?([^\",]*)\"?")


@dataclass(frozen=True, slots=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A PromQL-style instant selector: `name{label=value,...}` (quotes optional)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MetricSpec:
        match = _SPEC.match(text)
        if not match:
            raise ValueError(f"invalid metric spec {text!r}: expected name{{label=value,...}}")
        name, labels = match.group(1), match.group(2) or ""
        pairs = tuple((k, v) for k, v in _UNQUOTED_LABEL.findall(labels) if k)
        return cls(name, pairs)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels)


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


class Extractor:
    """Finds the samples of a fixed set of metric names in one pass over the page."""

    def __init__(self, names: Iterable[str]) -> None:
        wanted = sorted(set(names), key=len, reverse=True)
        alternation = "|".join(re.escape(n) for n in wanted) or "(?!)"
        self._pattern = re.compile(rf"^({alternation})(\{{[^\n]*\}})?[ \t]+(\S+)", re.M)

    def extract(self, text: str) -> dict[str, list[Sample]]:
        found: dict[str, list[Sample]] = {}
        for match in self._pattern.finditer(text):
            name, raw_labels, raw_value = match.group(1), match.group(2), match.group(3)
            try:
                value = float(raw_value)
            except ValueError:
                continue
            labels = {k: _unescape(v) for k, v in _LABEL.findall(raw_labels)} if raw_labels else {}
            found.setdefault(name, []).append(Sample(labels, value))
        return found
