"""What a plugin is, and the extension points it may implement.

A plugin class derives from `Plugin` plus one or more extension-point mixins; the framework finds a
plugin's roles with isinstance, so one object can e.g. filter in a profile and also learn from
traffic. Plugins see only the parsed request and datastore endpoints, never gRPC or Envoy types."""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from epp.datastore import Endpoint
from epp.metrics.exporter import EppMetrics
from epp.params.strict import StrictModel
from epp.requests import InferenceRequest, Usage
from epp.scheduling.types import ProfileResult, SchedulingResult


class PluginParams(StrictModel):
    """Base of every plugin's `parameters` model."""


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


class Filter(Extension):
    @abstractmethod
    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        """The candidates to keep, in their original order."""


class Scorer(Extension):
    @abstractmethod
    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> Sequence[float]:
        """One score per candidate, same order; the framework clamps each to [0, 1]."""


class Picker(Extension):
    @abstractmethod
    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        """The chosen endpoints, best first; `scores` are the weighted totals per candidate."""


class ProfileHandler(Extension):
    @classmethod
    def profile_problems(cls, params: Any, profiles: Sequence[str]) -> list[str]:
        """Config errors in how the handler's parameters name the profiles (checked at load)."""
        return []

    @abstractmethod
    def pick_profiles(
        self,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileResult | None],
    ) -> Sequence[str]:
        """Profiles to run next given the results so far (None = ran and found nothing);
        an empty answer ends the scheduling cycle."""

    @abstractmethod
    def process_results(
        self, request: InferenceRequest, results: Mapping[str, ProfileResult | None]
    ) -> SchedulingResult:
        """Turn the profile results into the routing decision; raise SchedulingError to refuse."""


class DataProducer(Extension):
    produces: ClassVar[DataKey]

    @abstractmethod
    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        """Compute this request's data once, before any profile runs, and store it in
        `request.attributes[self.name]`."""


class DataConsumer(Extension):
    """Reads data some producer stored. `consumes` maps each key to the name of the parameter that
    may name the producer ("" when the plugin has no such parameter); the builder binds one
    producer per key before the first request."""

    consumes: ClassVar[Mapping[DataKey, str]]
    producers: dict[DataKey, str]

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


class PreRequest(Extension):
    @abstractmethod
    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        """After scheduling, before the request is forwarded."""


class ResponseReceived(Extension):
    @abstractmethod
    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None:
        """The model server's response headers arrived."""


class ResponseComplete(Extension):
    @abstractmethod
    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        """The response ended, however it ended (once per scheduled request)."""


class EndpointObserver(Extension):
    @abstractmethod
    def endpoint_removed(self, endpoint: Endpoint) -> None:
        """Drop state kept about an endpoint that left the pool."""


class SaturationDetector(Extension):
    @abstractmethod
    def saturation(self, candidates: Sequence[Endpoint]) -> float:
        """Pool saturation over these endpoints; 1.0 or more means saturated."""
