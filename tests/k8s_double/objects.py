"""Builders for the objects tests put into the double, shaped as the API server stores them."""

from __future__ import annotations

from typing import Any

Object = dict[str, Any]


def pod(
    name: str,
    ip: str | None = "127.0.0.1",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    annotations: dict[str, str] | None = None,
    namespace: str = "default",
) -> Object:
    metadata: Object = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if annotations:
        metadata["annotations"] = dict(annotations)
    status: Object = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": "model-server", "image": "epp:dev"}]},
        "status": status,
    }


def pool_v1(
    name: str,
    selector: dict[str, str],
    target_ports: list[int],
    failure_mode: str | None = "FailOpen",
    app_protocol: str | None = None,
    namespace: str = "default",
) -> Object:
    ref: Object = {"name": f"{name}-epp", "port": {"number": 9002}}
    if failure_mode:
        ref["failureMode"] = failure_mode
    spec: Object = {
        "selector": {"matchLabels": dict(selector)},
        "targetPorts": [{"number": port} for port in target_ports],
        "endpointPickerRef": ref,
    }
    if app_protocol:
        spec["appProtocol"] = app_protocol
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pool_alpha(name: str, selector: dict[str, str], target_port: int, namespace: str = "default") -> Object:
    """The v1alpha2 (inference.networking.x-k8s.io) shape: selector is the label map itself."""
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": dict(selector),
            "targetPortNumber": target_port,
            "extensionRef": {"name": f"{name}-epp", "failureMode": "FailClose"},
        },
    }


def objective(
    name: str, pool: str, priority: int | None = None, group: str | None = None, namespace: str = "default"
) -> Object:
    pool_ref: Object = {"name": pool}
    if group:
        pool_ref["group"] = group
    spec: Object = {"poolRef": pool_ref}
    if priority is not None:
        spec["priority"] = priority
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
