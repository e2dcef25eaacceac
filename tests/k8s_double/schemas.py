"""The CRD schemas (crds/, hand-written) as JSON Schema validators: the double checks every
custom resource a test stores, and the manifest tests check ours, as the API server would."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

CRD_DIR = Path(__file__).parent / "crds"


@functools.cache
def _validators() -> dict[tuple[str, str], Draft7Validator]:
    """(apiVersion, kind) -> validator, for every served version of every CRD in crds/."""
    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
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
    return sorted(CRD_DIR.glob("*.yaml"))


def has_schema(api_version: str, kind: str) -> bool:
    return (api_version, kind) in _validators()


def validate_custom_resource(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (naming the field) if `obj` breaks its CRD's schema."""
    _validators()[(obj["apiVersion"], obj["kind"])].validate(obj)
