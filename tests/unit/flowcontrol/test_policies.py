"""Flow-control policies driven through the controller's dispatch cycle: which request goes next."""

from __future__ import annotations

import asyncio

import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore
from epp.flowcontrol.controller import FlowController
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requests import ApiKind, InferenceRequest

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}]
flowControl:
  defaultPriorityBand: {{fairnessPolicyRef: {fairness}, orderingPolicyRef: {ordering}}}
"""


class Open:
    def saturation(self, candidates: object) -> float:
        return 0.0


class Shut:
    def saturation(self, candidates: object) -> float:
        return 1.0


def controller(fairness: str, ordering: str = "fcfs-ordering-policy") -> FlowController:
    config = load_config(CONFIG.format(fairness=fairness, ordering=ordering))
    director, _ = build_director(config, Datastore(), PluginContext(EppMetrics()))
    assert director.flow_control is not None
    director.flow_control.detector = Shut()  # queue everything; the test dispatches by hand
    return director.flow_control


def request(name: str, tenant: str, prompt_chars: int = 40, **headers: str) -> InferenceRequest:
    r = InferenceRequest(
        request_id=name,
        api=ApiKind.COMPLETIONS,
        path="",
        model="m",
        headers=headers,
        prompt=b"x" * prompt_chars,
    )
    r.fairness_id = tenant
    r.max_tokens = 0
    return r


async def dispatch_order(fc: FlowController, requests: list[InferenceRequest]) -> list[str]:
    order: list[str] = []

    async def wait(r: InferenceRequest) -> None:
        await fc.enqueue_and_wait(r)
        order.append(r.request_id)

    tasks = []
    for r in requests:
        tasks.append(asyncio.ensure_future(wait(r)))
        await asyncio.sleep(0.001)  # distinct enqueue times
    fc.detector = Open()
    while fc.length:
        assert fc.dispatch_cycle()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    await fc.stop()
    return order


A3B3 = [request("a1", "a"), request("a2", "a"), request("a3", "a"), request("b1", "b")]


@pytest.mark.parametrize(
    ("fairness", "expected"),
    [
        ("global-strict-fairness-policy", ["a1", "a2", "a3", "b1"]),
        ("round-robin-fairness-policy", ["a1", "b1", "a2", "a3"]),
    ],
)
async def test_gies_fairness_policies(fairness: str, expected: list[str]) -> None:
    assert await dispatch_order(controller(fairness), A3B3) == expected


async def test_least_tokens_served_serves_the_light_tenant_until_it_caught_up() -> None:
    heavy = [request(f"a{i}", "a", prompt_chars=4000) for i in range(3)]  # 1,000 tokens each
    light = [request(f"b{i}", "b", prompt_chars=40) for i in range(3)]  # 10 tokens each
    order = await dispatch_order(controller("least-tokens-served-fairness-policy"), heavy + light)
    assert order == ["a0", "b0", "b1", "b2", "a1", "a2"]


async def test_edf_and_slo_deadline_ordering() -> None:
    slo = [
        request("late", "t", **{"x-slo-ttft-ms": "5000"}),
        request("none", "t"),
        request("soon", "t", **{"x-slo-ttft-ms": "10"}),
    ]
    order = await dispatch_order(
        controller("global-strict-fairness-policy", "slo-deadline-ordering-policy"), slo
    )
    assert order == ["soon", "late", "none"]
    fcfs = await dispatch_order(controller("global-strict-fairness-policy", "edf-ordering-policy"), A3B3)
    assert fcfs == ["a1", "a2", "a3", "b1"]  # no TTL: no deadline, first come first served
