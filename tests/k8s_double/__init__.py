"""A wire-level Kubernetes API server double and object builders for discovery tests."""

from tests.k8s_double.server import (
    MODEL_REWRITES,
    OBJECTIVES,
    PODS,
    POOLS_ALPHA,
    POOLS_V1,
    ApiServerDouble,
    RequestRecord,
    Resource,
)

__all__ = [
    "MODEL_REWRITES",
    "OBJECTIVES",
    "PODS",
    "POOLS_ALPHA",
    "POOLS_V1",
    "ApiServerDouble",
    "RequestRecord",
    "Resource",
]
