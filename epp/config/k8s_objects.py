"""Kubernetes objects in a YAML file, as `kubectl get -o yaml` prints them or as written for
`kubectl apply`: one per document, or a `List` / `<Kind>List`. Standalone mode reads the same
objects a cluster would hold from such files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from epp.compiled import safe_yaml_documents
from epp.params.strict import ConfigError, describe

T = TypeVar("T")


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {what} file {path}: not UTF-8 text (byte {exc.start})") from None


def objects(text: str, source: str, kind: str) -> Iterator[tuple[str, Any]]:
    """(location for messages, object) for every object in the file, Lists unpacked."""
    try:
        documents = safe_yaml_documents(text)
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


def parsed_objects(
    text: str, source: str, kind: str, parse: Callable[[Any], T], problems: list[str]
) -> Iterator[tuple[str, T]]:
    """(location for messages, `parse(object)`) for every object of `kind` in the file. An
    object of another kind, or one `parse` refuses (pydantic's ValidationError, or a ValueError
    whose message starts with the field), is added to `problems` instead, so that a file's
    problems are all reported at once."""
    for path, item in objects(text, source, kind):
        problem = _kind_problem(path, item, kind)
        if problem is not None:
            problems.append(problem)
            continue
        try:
            parsed = parse(item)
        except ValidationError as exc:
            problems.extend(describe(exc, path))
            continue
        except ValueError as exc:
            problems.append(f"{path}.{exc}")
            continue
        yield path, parsed


def _kind_problem(path: str, item: Any, kind: str) -> str | None:
    """Why `item` is not an object of `kind`, or None."""
    if isinstance(item, dict) and item.get("kind") == kind:
        return None
    found = item.get("kind") if isinstance(item, dict) else type(item).__name__
    return f"{path}: expected kind {kind}, got {found!r}"
