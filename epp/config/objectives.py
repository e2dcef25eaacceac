"""Objective name -> priority for standalone mode, read from InferenceObjective YAML.

The file holds InferenceObjective objects exactly as Kubernetes has them (one per YAML document, or
a `kind: List` / `InferenceObjectiveList` as `kubectl get -o yaml` prints), so the same objects
work with and without a cluster. Requests select one with the `x-gateway-inference-objective`
header; an unknown or missing objective means priority 0, as in GIE."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from epp.config.k8s_objects import parsed_objects, read_text
from epp.params.strict import ConfigError, StrictModel

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
    priorities: dict[str, int] = {}
    problems: list[str] = []
    for path, objective in parsed_objects(text, source, KIND, _Objective.model_validate, problems):
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
    return load_objectives(read_text(path, "objectives"), str(path))
