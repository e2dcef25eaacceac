"""Metric sets created once per Prometheus registry: every plugin instance sharing a registry
(several producers in one EPP) registers the collectors once and labels its own series."""

from __future__ import annotations

import weakref
from typing import Any, ClassVar, Self

from prometheus_client import CollectorRegistry


class PerRegistry:
    """A subclass takes the registry as its one `__init__` argument; `for_registry` returns the
    instance for a registry, created on first use."""

    _instances: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._instances = weakref.WeakKeyDictionary()

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> Self:
        found = cls._instances.get(registry)
        if found is None:
            found = cls._instances[registry] = cls(registry)  # type: ignore[call-arg]
        return found
