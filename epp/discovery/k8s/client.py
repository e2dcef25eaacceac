"""The API client and the collections the EPP reads: one InferencePool, the pods of its
namespace that its selector matches, and the namespace's InferenceObjectives and InferenceModelRewrites.

`kubernetes_asyncio` is imported where it is first used, never at module level: importing it loads
every API model (about half a second of CPU), which an EPP or sidecar that reads a static endpoint
file would otherwise pay at each start, and every restart with it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from epp.discovery.k8s.model import (
    OBJECTIVE_GROUP,
    OBJECTIVE_VERSION,
    REWRITE_GROUP,
    REWRITE_VERSION,
    PoolRef,
)
from epp.discovery.k8s.reflector import Lister

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient


class KubeConfigError(Exception):
    """Neither a kubeconfig nor a service account to reach the API server with (kubernetes_asyncio's
    ConfigException, so that callers can catch it without importing the client library)."""


async def api_client(kubeconfig: Path | None = None) -> ApiClient:
    """From an explicit kubeconfig file; else the pod's service account (in a cluster, with the
    token re-read as the kubelet rotates it); else $KUBECONFIG or ~/.kube/config."""
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import ApiClient, Configuration

    configuration = Configuration()
    try:
        if kubeconfig is not None:
            await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                await config.load_kube_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise KubeConfigError(str(exc)) from exc
    return ApiClient(configuration)


def pool_lister(api: ApiClient, ref: PoolRef) -> Lister:
    """The pool by name: a field selector keeps the watch to this one object, as GIE's cache does."""
    from kubernetes_asyncio.client import CustomObjectsApi

    return functools.partial(
        CustomObjectsApi(api).list_namespaced_custom_object,
        ref.group,
        ref.version,
        ref.namespace,
        "inferencepools",
        field_selector=f"metadata.name={ref.name}",
    )


def pod_lister(api: ApiClient, namespace: str, label_selector: str) -> Lister:
    from kubernetes_asyncio.client import CoreV1Api

    return functools.partial(CoreV1Api(api).list_namespaced_pod, namespace, label_selector=label_selector)


def objective_lister(api: ApiClient, namespace: str) -> Lister:
    from kubernetes_asyncio.client import CustomObjectsApi

    return functools.partial(
        CustomObjectsApi(api).list_namespaced_custom_object,
        OBJECTIVE_GROUP,
        OBJECTIVE_VERSION,
        namespace,
        "inferenceobjectives",
    )


def model_rewrite_lister(api: ApiClient, namespace: str) -> Lister:
    from kubernetes_asyncio.client import CustomObjectsApi

    return functools.partial(
        CustomObjectsApi(api).list_namespaced_custom_object,
        REWRITE_GROUP,
        REWRITE_VERSION,
        namespace,
        "inferencemodelrewrites",
    )
