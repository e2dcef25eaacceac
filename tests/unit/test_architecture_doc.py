"""docs/architecture.md's table of layers is the import-linter layers contract of pyproject.toml,
row for row, and names every top-level package and module of `epp`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def contract_layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (layers,) = [c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [sorted(name.strip() for name in layer.split("|")) for layer in layers]


def documented_layers() -> list[list[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| \d+ \| (.+?) \| ", text, re.MULTILINE)
    return [sorted(re.findall(r"`(\w+)`", packages)) for packages in rows]


def test_the_layer_table_is_the_contract() -> None:
    assert documented_layers() == contract_layers()


def test_every_top_level_package_and_module_is_in_a_layer() -> None:
    top_level = {
        path.stem
        for path in (ROOT / "epp").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }
    assert sorted(top_level - {name for layer in contract_layers() for name in layer}) == []
