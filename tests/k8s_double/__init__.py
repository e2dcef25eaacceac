"""A wire-level Kubernetes API server double and object builders for discovery tests."""

from tests.k8s_double.server import (
    LEASES,
    MODEL_REWRITES,
    OBJECTIVES,
    PODS,
    POOLS_ALPHA,
    POOLS_V1,
    SERVICE_ACCOUNT,
    ApiServerDouble,
    RequestRecord,
    Resource,
    User,
)

__all__ = [
    "LEASES",
    "MODEL_REWRITES",
    "OBJECTIVES",
    "PODS",
    "POOLS_ALPHA",
    "POOLS_V1",
    "SERVICE_ACCOUNT",
    "ApiServerDouble",
    "RequestRecord",
    "Resource",
    "User",
]
