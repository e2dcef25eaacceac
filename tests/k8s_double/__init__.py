"""A wire-level Kubernetes API server double and object builders for discovery tests."""

from tests.k8s_double.server import (
    OBJECTIVES,
    PODS,
    POOLS_ALPHA,
    POOLS_V1,
    ApiServerDouble,
    RequestRecord,
    Resource,
)

__all__ = ["OBJECTIVES", "PODS", "POOLS_ALPHA", "POOLS_V1", "ApiServerDouble", "RequestRecord", "Resource"]
