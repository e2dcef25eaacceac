"""Data-layer extension points: where endpoint metrics are read from and how they are mapped
(the config wires them, `dataLayer.sources[].extractors[]`, and they configure the scraper), the
per-request data producers that run before scheduling, and observers of endpoints leaving."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from epp.datalayer.engines import EngineMetrics
from epp.datalayer.k8sobjects import GroupVersionKind, ObjectEvent
from epp.datalayer.models import ServedModel
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.framework import DataKey, Extension
from epp.requests import InferenceRequest


class MetricsSource(Extension):
    @abstractmethod
    def url_parts(self) -> tuple[str, str, bool]:
        """(scheme, path, insecure_skip_verify) of each endpoint's metrics page."""


class EndpointDiscovery(Extension):
    """llm-d's `dataLayer.discovery`: the endpoints come from this plugin's file instead of
    Kubernetes or the command line. The file is read before serving (a bad one stops the EPP) and,
    with `watch_file`, again whenever it changes (a bad one keeps the endpoints in force)."""

    endpoints_file: Path
    watch_file: bool

    @abstractmethod
    def parse_endpoints(self, text: str, source: str) -> tuple[list[EndpointSpec], list[str]]:
        """The file's endpoints, and one problem per entry left out; ValueError for a file that
        cannot be read as a whole."""


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


class AsyncDataProducer(Extension):
    """Per-request data that needs I/O (tokenizing through a model server's render API) or that
    another replica is about to send (a response's endpoint). The director awaits
    `prepare_async` once, after parsing and before scheduling; it stores what it produces in
    `request.attributes[self.name]` (or in its own state), must finish within its own timeout
    and never raise — a failure leaves the data out, and the plugin's sync `prepare` (if any)
    falls back."""

    @abstractmethod
    async def prepare_async(self, request: InferenceRequest) -> None: ...

    @property
    def awaits_requests(self) -> bool:
        """False while `prepare_async` has nothing to await (no peer replica to wait for):
        requests then skip the awaited step for this producer (and, with no other, altogether)."""
        return True


class BackgroundService(Extension):
    """A plugin with background work (reading KV events): started with the service, before
    endpoints are discovered, and stopped with it. `datastore` is the pool it serves."""

    @abstractmethod
    async def start(self, datastore: Datastore) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...


class DataSource(Extension):
    """A `dataLayer` source besides the metrics page. The config wires extractors to it
    (`sources[].extractors[]`), each of which must be an `extractor_role`; the builder hands them
    over once, before the service starts."""

    extractor_role: ClassVar[type[Extension]]
    extractor_role_text: ClassVar[str]  # in words, for the loader's errors
    extractors: list[Extension]

    def use_extractors(self, extractors: Sequence[Extension]) -> None:
        self.extractors = list(extractors)


class EndpointObserver(Extension):
    @abstractmethod
    def endpoint_removed(self, endpoint: Endpoint) -> None:
        """Drop state kept about an endpoint that left the pool."""


class NotificationSource(DataSource):
    """A `dataLayer` source of endpoint add/delete notifications (llm-d's
    `endpoint-notification-source`); its extractors are endpoint observers. Here every endpoint
    observer and background service is told of pool changes anyway, so the source only validates
    the wiring."""

    extractor_role = EndpointObserver
    extractor_role_text = "an endpoint observer"


class KubernetesObjectObserver(Extension):
    """Hears of every add, update and delete of one kind of Kubernetes object in the pool's
    namespace (llm-d's NotificationExtractor), through a `k8s-notification-source` for that kind:
    one the config lists, else one the loader adds (named `<observer>/<kind>`), as llm-d does."""

    watched_kind: ClassVar[GroupVersionKind]

    @classmethod
    def watches_objects(cls, params: Any) -> bool:
        """Whether these parameters need the objects at all (a source is added only then)."""
        return True

    @abstractmethod
    def object_event(self, event: ObjectEvent) -> None: ...


class KubernetesSource(DataSource):
    """Streams one kind of Kubernetes object to its observers; the server runs the watch (in the
    namespace it discovers endpoints in) and calls `notify` for every change."""

    extractor_role = KubernetesObjectObserver
    extractor_role_text = "a Kubernetes object observer"

    @classmethod
    @abstractmethod
    def kind_of(cls, params: Any) -> GroupVersionKind:
        """The kind these parameters watch (the loader matches observers to sources by it)."""

    @property
    @abstractmethod
    def kind(self) -> GroupVersionKind: ...

    @abstractmethod
    def notify(self, event: ObjectEvent) -> None:
        """Hand one change to every observer."""


class ModelsExtractor(Extension):
    """Takes what a `models-data-source` read from one endpoint's model list."""

    @abstractmethod
    def extract_models(self, endpoint: Endpoint, models: Sequence[ServedModel]) -> None: ...
