"""The data layer: scraping model servers' metrics into the datastore, the extension points that
configure it, and the per-request data producers that run before scheduling."""

from epp.datalayer.extensions import (
    AsyncDataProducer,
    BackgroundService,
    DataProducer,
    DataSource,
    EndpointDiscovery,
    EndpointObserver,
    KubernetesObjectObserver,
    KubernetesSource,
    MetricsExtractor,
    MetricsSource,
    ModelsExtractor,
    NotificationSource,
)

__all__ = [
    "AsyncDataProducer",
    "BackgroundService",
    "DataProducer",
    "DataSource",
    "EndpointDiscovery",
    "EndpointObserver",
    "KubernetesObjectObserver",
    "KubernetesSource",
    "MetricsExtractor",
    "MetricsSource",
    "ModelsExtractor",
    "NotificationSource",
]
