"""Data-layer extension points: where endpoint metrics are read from and how they are mapped
(the config wires them, `dataLayer.sources[].extractors[]`, and they configure the scraper), the
per-request data producers that run before scheduling, and observers of endpoints leaving."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

from epp.datalayer.engines import EngineMetrics
from epp.datastore import Endpoint
from epp.framework import DataKey, Extension
from epp.requests import InferenceRequest


class MetricsSource(Extension):
    @abstractmethod
    def url_parts(self) -> tuple[str, str, bool]:
        """(scheme, path, insecure_skip_verify) of each endpoint's metrics page."""


class MetricsExtractor(Extension):
    @abstractmethod
    def engines(self) -> Mapping[str, EngineMetrics]:
        """Engine name -> where that engine publishes each metric."""

    @abstractmethod
    def default_engine(self) -> str:
        """The engine assumed for endpoints without an engine-type label."""

    @abstractmethod
    def engine_label_key(self) -> str:
        """The endpoint label naming its engine."""


class DataProducer(Extension):
    produces: ClassVar[DataKey]

    @abstractmethod
    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        """Compute this request's data once, before any profile runs, and store it in
        `request.attributes[self.name]`."""


class EndpointObserver(Extension):
    @abstractmethod
    def endpoint_removed(self, endpoint: Endpoint) -> None:
        """Drop state kept about an endpoint that left the pool."""
