"""Kubernetes objects as the data layer hears of them: which kind (group, version, kind) and one
add/update or delete of an object, as its JSON form (llm-d's NotificationEvent)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GroupVersionKind:
    group: str  # "" for the core group (pods, services, ...)
    version: str
    kind: str

    def __str__(self) -> str:
        return f"{self.group}/{self.version}, Kind={self.kind}"  # as Go's schema.GroupVersionKind


POD = GroupVersionKind("", "v1", "Pod")


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """An object was added or changed (`deleted` False: `obj` is its new state) or deleted
    (`obj` is its last known state)."""

    deleted: bool
    obj: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        metadata = self.obj.get("metadata") or {}
        return metadata.get("namespace", ""), metadata.get("name", "")


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready as Kubernetes means it (condition Ready=True), and not being deleted."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}
