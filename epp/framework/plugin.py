"""What a plugin is: its name, parameters and context, the per-request data keys plugins share,
and the base of every extension point.

A plugin class derives from `Plugin` plus one or more extension-point mixins, which each area
defines for itself (scheduling: filters, scorers, pickers, profile handlers; datalayer: data
producers, metrics sources; requestcontrol: request hooks; flowcontrol: saturation detectors). The
framework finds a plugin's roles with isinstance, so one object can e.g. score in a profile and
also learn from traffic. Plugins see only parsed requests and endpoints, never gRPC or Envoy."""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from epp.metrics.exporter import EppMetrics
from epp.params.strict import StrictModel
from epp.requests import InferenceRequest


@dataclass(frozen=True)
class ImpliedPlugin:
    """A plugin an old parameter stands for (e.g. the v0.5 P/D handler's `threshold` is a decider
    now): the loader adds it, named after its type, unless a plugin of that name exists."""

    type_name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ParameterUpgrade:
    """Parameters as written, translated to the current names; what changed, in words."""

    parameters: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # refused outright (each a config error)
    implied: list[ImpliedPlugin] = field(default_factory=list)
    # Another type these parameters stand for (e.g. llm-d v0.2's `mode: cache_tracking`): the
    # loader builds that type instead, upgrading the parameters with its Params.
    read_as: str = ""


class PluginParams(StrictModel):
    """Base of every plugin's `parameters` model. The loader decodes them leniently (unknown
    fields are warnings, as Go's json.Unmarshal ignores them) unless --strict-config is given."""

    is_parameters_root: ClassVar[bool] = True
    # Older parameter names (camelCase, as written) and the current name each one means.
    renamed: ClassVar[Mapping[str, str]] = {}
    # Whether a consumer's parameters of the same name configure this plugin when the loader creates
    # it as a default producer (GIE <= v1.4's prefix parameters on prefix-cache-scorer).
    takes_consumer_parameters: ClassVar[bool] = True

    @classmethod
    def upgrade(cls, raw: Mapping[str, Any], type_name: str = "") -> ParameterUpgrade:
        """Translate renamed parameters, each with a deprecation warning. Subclasses with older
        shapes than a rename extend this; `type_name` is the type as the config wrote it (an
        older alias may imply older defaults)."""
        upgrade = ParameterUpgrade(dict(raw))
        for old, new in cls.renamed.items():
            if old not in upgrade.parameters:
                continue
            value = upgrade.parameters.pop(old)
            if new in upgrade.parameters:
                upgrade.warnings.append(f"{old} is deprecated and ignored because {new} is also set")
            else:
                upgrade.parameters[new] = value
                upgrade.warnings.append(f"{old} is deprecated: read as {new}")
        return upgrade


class NoParams(PluginParams):
    pass


@dataclass(frozen=True)
class PluginContext:
    """What the EPP hands every plugin at construction: its metrics, a random source and a clock
    (both replaceable so tests and benchmarks are repeatable)."""

    metrics: EppMetrics = field(default_factory=EppMetrics)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic


class Plugin:
    """A configured plugin instance: `type_name` says what it does, `name` which instance it is."""

    type_name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()  # older type names that still load
    Params: ClassVar[type[PluginParams]] = NoParams

    def __init__(self, name: str, params: Any, context: PluginContext) -> None:
        self.name = name
        self.producers: dict[DataKey, str] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass(frozen=True)
class DataKey:
    """Per-request data one plugin produces and others consume (GIE's data-producer keys). A
    consumer that nobody produces for gets `default_producer` created with default parameters."""

    name: str
    default_producer: str


class Extension(ABC):
    """Base of the extension-point mixins: whatever implements one is a plugin with a name."""

    name: str
    type_name: ClassVar[str]


class DataConsumer(Extension):
    """Reads data some producer stored. `consumes` maps each key to the name of the parameter that
    may name the producer ("" when the plugin has no such parameter); the builder binds one
    producer per key before the first request."""

    consumes: ClassVar[Mapping[DataKey, str]]
    # Keys read only when a producer of them is configured: none is created for this reader
    # (llm-d's optional data dependencies).
    optional_consumes: ClassVar[frozenset[DataKey]] = frozenset()
    producers: dict[DataKey, str]

    @classmethod
    def consumed_keys(cls, params: Any) -> Mapping[DataKey, str]:
        """The keys a plugin with these parameters reads: all of `consumes` unless it says less."""
        return cls.consumes

    def bind_producer(self, key: DataKey, producer: str) -> None:
        self.producers[key] = producer

    def consumed(self, request: InferenceRequest, key: DataKey) -> object:
        """This request's data for `key` (None when unbound or when the producer stored nothing)."""
        producer = self.producers.get(key)
        return None if producer is None else request.attributes.get(producer)


@dataclass(frozen=True)
class PluginReference:
    """A parameter of one plugin that names another, which must implement `role`."""

    parameter: str  # its path under `parameters`, for error messages (e.g. `deciders.prefill`)
    plugin: str
    role: type
    role_text: str  # what the referenced plugin must be, in words ("a prefill decider")


class PluginUser(Extension):
    """Calls other configured plugins by name, e.g. a P/D profile handler and its deciders. The
    loader checks the references before anything is built; the builder hands over the instances."""

    @classmethod
    @abstractmethod
    def referenced_plugins(cls, params: Any) -> list[PluginReference]:
        """The plugins these parameters name."""

    @abstractmethod
    def use_plugins(self, plugins: Mapping[str, Plugin]) -> None:
        """Receive every configured plugin instance by name, once, before the first request."""
