"""The plugin lists in docs/configuration.md and the README name every plugin type this EPP
registers and nothing else, the configuration doc every upstream type it refuses, and the
plugin docs every parameter a built-in plugin reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from epp.config.unavailable import UNAVAILABLE_TYPES
from epp.framework.registry import PACKAGES, plugin_types

ROOT = Path(__file__).parents[3]
# Where plugin parameters are documented: formulas and defaults, the config format, P/D.
PARAMETER_DOCS = ("docs/scheduling.md", "docs/configuration.md", "docs/pd.md")
# The plugin tables: from the heading before each to the text that follows it.
PLUGIN_TABLES = {
    "docs/configuration.md": ("## Plugin types", "Known upstream but refused"),
    "README.md": ("Plugins:", "The benchmark baselines"),
}


def builtin_types() -> list[str]:
    return sorted(
        name
        for name, cls in plugin_types().items()
        if name == cls.type_name and cls.__module__.startswith(PACKAGES)
    )


@pytest.mark.parametrize("doc", ["docs/configuration.md", "README.md"])
def test_every_registered_plugin_type_is_documented(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert [name for name in builtin_types() if f"`{name}`" not in text] == []


def listed_names(cell: str) -> list[str]:
    """The dashed, backticked names a table cell lists, leaving out its asides: parentheses
    (aliases, header names, links) and a description after a colon, up to the next item."""
    while True:
        shorter = re.sub(r"\([^()]*\)", "", cell)
        if shorter == cell:
            break
        cell = shorter
    return re.findall(r"`([a-z0-9]+(?:-[a-z0-9]+)+)`", re.sub(r":[^;]*", "", cell))


@pytest.mark.parametrize("doc", sorted(PLUGIN_TABLES))
def test_the_plugin_tables_name_only_registered_types(doc: str) -> None:
    start, end = PLUGIN_TABLES[doc]
    text = (ROOT / doc).read_text()
    table = text[text.index(start) : text.index(end)]
    registered = plugin_types()
    named = {
        name
        for row in table.splitlines()
        if row.startswith("| ") and not row.startswith("| Kind")
        for name in listed_names(row.split("|", 2)[2])
    }
    assert named, f"no plugin table found in {doc}"
    assert sorted(name for name in named if name not in registered) == []


def test_every_refused_upstream_type_is_listed() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert [name for name in UNAVAILABLE_TYPES if f"`{name}`" not in text] == []


def test_every_parameter_of_a_builtin_plugin_is_documented() -> None:
    """Each top-level parameter (as configs spell it) appears in the docs as written in a table
    (`name`, `name` {...}, `name.sub`, `name[]`, `name: ...`) or as a key of a YAML example."""
    text = "".join((ROOT / doc).read_text() for doc in PARAMETER_DOCS)
    missing = []
    for type_name in builtin_types():
        for field_name, field in plugin_types()[type_name].Params.model_fields.items():
            key = re.escape(field.alias or field_name)
            if not re.search(rf"[`{{]{key}[`.\[ :=}}]|^[ \t#]*-?[ \t]*{key}:", text, re.MULTILINE):
                missing.append(f"{type_name}.{field.alias or field_name}")
    assert missing == []
