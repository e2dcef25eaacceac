"""Plugin types by the name configs use. Plugin modules register themselves on import.

The registry imports every module of `PACKAGES` on first lookup, so adding a plugin is adding a
file there. A name not found there is looked up in `ON_DEMAND_PACKAGES` (the benchmark's
re-implementations of other routers), which are imported only then: a config that names none of
them never loads them or what they depend on."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from typing import TypeVar

from epp.framework.plugin import Plugin

P = TypeVar("P", bound=type[Plugin])

PACKAGES = ("epp.plugins",)
ON_DEMAND_PACKAGES = ("epp.bench.peers",)

_TYPES: dict[str, type[Plugin]] = {}
_CANONICAL: set[str] = set()
_scanned: set[str] = set()


def register(cls: P) -> P:
    """Class decorator: make `cls` loadable by its type name and its aliases."""
    for type_name in (cls.type_name, *cls.aliases):
        known = _TYPES.get(type_name)
        if known is not None and known is not cls:
            raise RuntimeError(f"plugin type {type_name!r} registered twice: {known} and {cls}")
        _TYPES[type_name] = cls
    _CANONICAL.add(cls.type_name)
    return cls


def scan(packages: Iterable[str]) -> None:
    """Import every module of these packages (once each), registering their plugins."""
    for name in packages:
        if name in _scanned:
            continue
        package = importlib.import_module(name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{name}.{module.name}")
        _scanned.add(name)


def plugin_types() -> Mapping[str, type[Plugin]]:
    """Every type name (aliases included) registered so far, the built-in packages at least."""
    scan(PACKAGES)
    return _TYPES


def find_plugin_type(type_name: str) -> type[Plugin] | None:
    """The class for a type name, loading the on-demand packages only if it is not built in."""
    cls = plugin_types().get(type_name)
    if cls is None:
        scan(ON_DEMAND_PACKAGES)
        cls = _TYPES.get(type_name)
    return cls


def canonical_type_names() -> list[str]:
    """Current type names only (no aliases) of every package, sorted: what error messages list."""
    scan((*PACKAGES, *ON_DEMAND_PACKAGES))
    return sorted(_CANONICAL)
