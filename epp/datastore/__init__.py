"""Live endpoint state: what discovery found and what scraping measured."""

from epp.datastore.endpoint import Endpoint, EndpointMetrics, EndpointSpec
from epp.datastore.store import Datastore

__all__ = ["Datastore", "Endpoint", "EndpointMetrics", "EndpointSpec"]
