"""The data layer: scraping model servers' metrics into the datastore, the extension points that
configure it, and the per-request data producers that run before scheduling."""

from epp.datalayer.extensions import DataProducer, EndpointObserver, MetricsExtractor, MetricsSource

__all__ = ["DataProducer", "EndpointObserver", "MetricsExtractor", "MetricsSource"]
