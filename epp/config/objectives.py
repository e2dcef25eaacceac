"""Objective name -> priority for standalone mode, read from InferenceObjective YAML.

The file holds InferenceObjective objects exactly as Kubernetes has them (one per YAML document, or
a `kind: List` / `InferenceObjectiveList` as `kubectl get -o yaml` prints), so the same objects
work with and without a cluster. Requests select one with the `x-gateway-inference-objective`
header; an unknown or missing objective means priority 0, as in GIE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from epp.params.strict import ConfigError, StrictModel, describe

API_GROUP = "inference.networking.x-k8s.io/"
KIND = "InferenceObjective"


class _PoolRef(StrictModel):
    group: str | None = None
    kind: str | None = None
    name: str = Field(min_length=1)


class _Spec(StrictModel):
    priority: int | None = None
    pool_ref: _PoolRef | None = None


class _Metadata(BaseModel):
    """Only the name matters; server-set fields (uid, resourceVersion...) are allowed and ignored."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)


class _Objective(BaseModel):
    model_config = ConfigDict(extra="ignore")  # status and other server-set fields
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: _Metadata
    spec: _Spec = _Spec()


def load_objectives(text: str, source: str = "objectives") -> dict[str, int]:
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    priorities: dict[str, int] = {}
    problems: list[str] = []
    for path, item in _objects(documents, source):
        if not isinstance(item, dict) or item.get("kind") != KIND:
            kind = item.get("kind") if isinstance(item, dict) else type(item).__name__
            problems.append(f"{path}: expected kind {KIND}, got {kind!r}")
            continue
        try:
            objective = _Objective.model_validate(item)
        except ValidationError as exc:
            problems.extend(describe(exc, path))
            continue
        if not objective.api_version.startswith(API_GROUP):
            problems.append(
                f"{path}.apiVersion: expected {API_GROUP}<version>, got {objective.api_version!r}"
            )
        name = objective.metadata.name
        if name in priorities:
            problems.append(f"{path}.metadata.name: objective {name!r} is defined twice")
        priorities[name] = objective.spec.priority or 0
    if problems:
        raise ConfigError("; ".join(problems))
    return priorities


def load_objectives_file(path: Path) -> dict[str, int]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read objectives file {path}: {exc.strerror}") from None
    return load_objectives(text, str(path))


def _objects(documents: list[Any], source: str) -> Iterator[tuple[str, Any]]:
    """(location for messages, object) for every object, unpacking Lists."""
    for i, document in enumerate(documents):
        where = f"{source}: document {i + 1}"
        if isinstance(document, dict) and document.get("kind") in ("List", f"{KIND}List"):
            items = document.get("items") or []
            if not isinstance(items, list):
                raise ConfigError(f"{where}.items: expected a list")
            for j, item in enumerate(items):
                yield f"{where}.items[{j}]", item
        else:
            yield where, document
