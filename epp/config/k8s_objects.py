"""Kubernetes objects in a YAML file, as `kubectl get -o yaml` prints them or as written for
`kubectl apply`: one per document, or a `List` / `<Kind>List`. Standalone mode reads the same
objects a cluster would hold from such files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from epp.params.strict import ConfigError


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None


def objects(text: str, source: str, kind: str) -> Iterator[tuple[str, Any]]:
    """(location for messages, object) for every object in the file, Lists unpacked."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    for i, document in enumerate(documents):
        where = f"{source}: document {i + 1}"
        if isinstance(document, dict) and document.get("kind") in ("List", f"{kind}List"):
            items = document.get("items") or []
            if not isinstance(items, list):
                raise ConfigError(f"{where}.items: expected a list")
            for j, item in enumerate(items):
                yield f"{where}.items[{j}]", item
        else:
            yield where, document


def kind_problem(path: str, item: Any, kind: str) -> str | None:
    """Why `item` is not an object of `kind`, or None."""
    if isinstance(item, dict) and item.get("kind") == kind:
        return None
    found = item.get("kind") if isinstance(item, dict) else type(item).__name__
    return f"{path}: expected kind {kind}, got {found!r}"
