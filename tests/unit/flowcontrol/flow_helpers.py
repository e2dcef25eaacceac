"""Drive a flow controller built from a config: queue requests while the pool reads full, then
lower the saturation and record the order its dispatch loop releases them in."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from epp.config.build import EndpointPickerComponents, build_director
from epp.config.loader import load_config, load_config_file
from epp.datastore import Datastore
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.eviction import EvictionItem
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requests import ApiKind, InferenceRequest
from tests.unit.plugin_helpers import FakeClock

UPSTREAM_CONFIGS = Path(__file__).parents[2] / "data" / "upstream" / "configs"


def flow_control_config(flow_control: dict[str, Any], plugins: Sequence[str] = (), gated: bool = True) -> str:
    """The flow-control tests' EndpointPickerConfig: the flowControl feature gate (unless not
    `gated`), queue-scorer as the one profile's scorer, a concurrency-detector of maxConcurrency 1
    (one request in flight per endpoint saturates the pool) as saturation detector, more plugins
    by type, and this `flowControl` section."""
    config: dict[str, Any] = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        **({"featureGates": ["flowControl"]} if gated else {}),
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
            *({"type": plugin} for plugin in plugins),
        ],
        "saturationDetector": {"pluginRef": "concurrency-detector"},
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
        "flowControl": flow_control,
    }
    return yaml.safe_dump(config, sort_keys=False)


class Saturation:
    """A saturation detector whose reading the test sets."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value

    def saturation(self, candidates: object) -> float:
        return self.value


def built(
    config: str | Path, clock: FakeClock, metrics: EppMetrics | None = None
) -> tuple[FlowController, EndpointPickerComponents, Saturation]:
    """The controller and plugins of a config (YAML text or a file), reading saturation from the
    returned detector (1.0, full, to start with) and time from `clock`."""
    loaded = load_config_file(config) if isinstance(config, Path) else load_config(config)
    context = PluginContext(metrics or EppMetrics(), random.Random(0), clock)
    director, components = build_director(loaded, Datastore(), context)
    assert director.flow_control is not None
    detector = Saturation()
    director.flow_control.detector = detector
    return director.flow_control, components, detector


def queued_request(name: str, fairness_id: str, priority: int = 0) -> InferenceRequest:
    r = InferenceRequest(request_id=name, api=ApiKind.COMPLETIONS, path="", model="m", prompt=b"x" * 40)
    r.fairness_id = fairness_id
    r.priority = priority
    return r


def in_flight(name: str, priority: int, dispatched: float = 0.0) -> EvictionItem:
    """A routed request as the evictor tracks it (inside a running event loop)."""
    request = queued_request(name, "t", priority)
    signal = asyncio.get_running_loop().create_future()
    return EvictionItem(request, priority, dispatched, "10.0.0.1:8000", signal)


class Queue:
    """Requests waiting in a controller, each in its own task, and the order they leave in."""

    def __init__(self, fc: FlowController) -> None:
        self.fc = fc
        self.order: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def add(self, request: InferenceRequest) -> None:
        async def wait() -> None:
            await self.fc.enqueue_and_wait(request)
            self.order.append(request.request_id)

        self.tasks.append(asyncio.ensure_future(wait()))
        await asyncio.sleep(0)  # the task runs up to its wait: the request is queued
        assert self.fc.length == len(self.tasks) - len(self.order)

    async def drain(self, detector: Saturation, saturation: float = 0.0) -> list[str]:
        """Let the dispatch loop release everything at this saturation; the release order."""
        detector.value = saturation
        async with asyncio.timeout(10):
            await asyncio.gather(*self.tasks)
        return self.order
