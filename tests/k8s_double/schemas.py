"""Official CRD schemas (GIE's, and those of the Istio and Envoy Gateway patch kinds we ship;
tests/data/upstream/crds/, verbatim, sources in SOURCES.yaml) as JSON Schema validators: the
double checks every custom resource a test stores, and the manifest tests check ours, as the API
server would. CEL rules (x-kubernetes-validations) are not run."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, ValidationError

CRD_DIR = Path(__file__).parents[1] / "data" / "upstream" / "crds"


@functools.cache
def _validators() -> dict[tuple[str, str], Draft7Validator]:
    """(apiVersion, kind) -> validator, for every served version of every CRD in CRD_DIR."""
    validators = {}
    for path in crd_files():
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            Draft7Validator.check_schema(schema)
            validators[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = Draft7Validator(
                schema
            )
    return validators


def crd_files() -> list[Path]:
    return sorted(p for p in CRD_DIR.glob("*.yaml") if p.name != "SOURCES.yaml")


def has_schema(api_version: str, kind: str) -> bool:
    return (api_version, kind) in _validators()


def validate_custom_resource(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (naming the field) if `obj` breaks its CRD's schema, or
    has a field the schema does not know: the API server would prune it silently (structural
    schemas), which for a manifest of ours or a test object means a typo."""
    validator = _validators()[(obj["apiVersion"], obj["kind"])]
    validator.validate(obj)
    unknown = list(_pruned(obj, validator.schema, ""))
    if unknown:
        raise ValidationError(f"unknown fields the API server would drop: {', '.join(unknown)}")


# Every object's own fields, kept by the server whether or not a CRD's schema names them (GIE's
# do, Istio's name only spec and status).
_OBJECT_FIELDS = {"apiVersion": {}, "kind": {}, "metadata": {}}


def _pruned(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Paths in `value` that the schema's `properties` do not name (metadata is the server's)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata":
        return
    if isinstance(value, dict) and "properties" in schema:
        properties = {**_OBJECT_FIELDS, **schema["properties"]} if not path else schema["properties"]
        for key, child in value.items():
            if key not in properties:
                yield f"{path}.{key}"
            else:
                yield from _pruned(child, properties[key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, child in value.items():
            yield from _pruned(child, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, child in enumerate(value):
            yield from _pruned(child, schema["items"], f"{path}[{i}]")
