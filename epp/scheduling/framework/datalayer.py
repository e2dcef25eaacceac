"""Data-layer extension points: where endpoint metrics are read from and how they are mapped.
The config wires them (`dataLayer.sources[].extractors[]`); they configure the metrics scraper."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

from epp.metrics.engines import EngineMetrics
from epp.scheduling.framework.plugin import Extension


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


class RequestParser(Extension):
    """Marks the plugins a config's `parser` section may name."""
