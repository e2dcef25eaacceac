"""The plugin lists in docs/configuration.md and the README name every plugin type this EPP
registers, and the configuration doc every upstream type it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config.unavailable import UNAVAILABLE_TYPES
from epp.framework.registry import PACKAGES, plugin_types

ROOT = Path(__file__).parents[3]


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


def test_every_refused_upstream_type_is_listed() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert [name for name in UNAVAILABLE_TYPES if f"`{name}`" not in text] == []
