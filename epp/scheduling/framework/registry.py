"""Plugin types by the name configs use. Plugin modules register themselves on import; every
module in `epp.scheduling.plugins` is imported on first lookup, so adding a plugin is adding a file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import TypeVar

from epp.scheduling.framework.plugin import Plugin

P = TypeVar("P", bound=type[Plugin])

_TYPES: dict[str, type[Plugin]] = {}
_CANONICAL: set[str] = set()
_builtins_loaded = False


def register(cls: P) -> P:
    """Class decorator: make `cls` loadable by its type name and its aliases."""
    for type_name in (cls.type_name, *cls.aliases):
        known = _TYPES.get(type_name)
        if known is not None and known is not cls:
            raise RuntimeError(f"plugin type {type_name!r} registered twice: {known} and {cls}")
        _TYPES[type_name] = cls
    _CANONICAL.add(cls.type_name)
    return cls


def plugin_types() -> Mapping[str, type[Plugin]]:
    """Every loadable type name (aliases included) and its class."""
    global _builtins_loaded
    if not _builtins_loaded:
        package = importlib.import_module("epp.scheduling.plugins")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _builtins_loaded = True
    return _TYPES


def canonical_type_names() -> list[str]:
    """Current type names only (no aliases), sorted: what error messages list."""
    plugin_types()
    return sorted(_CANONICAL)
