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
from epp.requests import ApiKind, InferenceRequest, RequestError

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


async def release_all(fc: FlowController, tasks: list[asyncio.Future[None]]) -> None:
    """Open the pool and dispatch one request per cycle, letting each waiter run before the next,
    until nothing is queued; then wait for every waiter and stop the controller."""
    fc.detector = Open()
    while fc.length:
        assert fc.dispatch_cycle()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    await fc.stop()


async def dispatch_order(fc: FlowController, requests: list[InferenceRequest]) -> list[str]:
    order: list[str] = []

    async def wait(r: InferenceRequest) -> None:
        await fc.enqueue_and_wait(r)
        order.append(r.request_id)

    tasks = []
    for r in requests:
        tasks.append(asyncio.ensure_future(wait(r)))
        await asyncio.sleep(0.001)  # distinct enqueue times
    await release_all(fc, tasks)
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


@pytest.mark.parametrize(
    "value",
    ["\u00b2", "\uff11\uff10", "1" * 5000, "9223372036855"],
    ids=["²", "fullwidth 10", "5,000 digits", "past int64 nanoseconds"],
)
async def test_an_slo_header_llm_d_cannot_parse_is_no_deadline_not_a_failed_request(value: str) -> None:
    """As llm-d's strconv.ParseInt: ASCII digits, at most int64 nanoseconds in milliseconds.
    str.isdigit takes "²" and int() then refused it, and int() refuses more than 4,300 digits: a
    client's `x-slo-ttft-ms: ²` failed its own request with the EPP's 500 and a traceback, from
    inside the queue's push. Fullwidth digits were read as a deadline."""
    slo = [
        request("none", "t"),
        request("odd", "t", **{"x-slo-ttft-ms": value}),
        request("soon", "t", **{"x-slo-ttft-ms": "10"}),
    ]
    order = await dispatch_order(
        controller("global-strict-fairness-policy", "slo-deadline-ordering-policy"), slo
    )
    assert order == ["soon", "none", "odd"]  # no deadline: after every one with one, by arrival


async def test_llm_ds_slo_header_is_read_first_and_gies_name_after_it() -> None:
    """llm-d-router names it `x-llm-d-slo-ttft-ms` and keeps `x-slo-ttft-ms` as its deprecated
    alias (metadata/consts.go, ebab687): an llm-d client's SLO was ignored, its request served
    after every request with a deadline."""
    slo = [
        request("none", "t"),
        request("gie", "t", **{"x-slo-ttft-ms": "5000"}),
        request("llm-d", "t", **{"x-llm-d-slo-ttft-ms": "10"}),
        request("both", "t", **{"x-llm-d-slo-ttft-ms": "1", "x-slo-ttft-ms": "100000"}),
    ]
    order = await dispatch_order(
        controller("global-strict-fairness-policy", "slo-deadline-ordering-policy"), slo
    )
    assert order == ["both", "llm-d", "gie", "none"]


async def test_round_robin_gives_a_flow_that_starts_waiting_its_turn_before_the_one_just_served() -> None:
    fc = controller("round-robin-fairness-policy")
    order: list[str] = []

    async def wait(r: InferenceRequest) -> None:
        await fc.enqueue_and_wait(r)
        order.append(r.request_id)

    async def arrive(r: InferenceRequest) -> asyncio.Task[None]:
        task = asyncio.ensure_future(wait(r))
        await asyncio.sleep(0)  # queued
        return task

    tasks = [await arrive(request(f"b{i}", "b")) for i in range(4)]
    fc.detector = Open()
    assert fc.dispatch_cycle()  # b0: b was served last
    fc.detector = Shut()  # the controller's own dispatch loop must not run meanwhile
    tasks.append(await arrive(request("a0", "a")))  # a starts waiting
    tasks.append(await arrive(request("c0", "c")))  # then c
    await release_all(fc, tasks)
    assert order == ["b0", "a0", "c0", "b1", "b2", "b3"]


async def test_least_tokens_served_lifts_a_tenant_back_from_idle_to_the_waiting_minimum() -> None:
    """VTC's lift: tenant a was served once, then b alone for a while; when a waits again it
    counts from b's level, not from its old low count, so it does not take the next dispatches
    in a row; at an equal count it goes first (served less recently)."""
    fc = controller("least-tokens-served-fairness-policy")
    order: list[str] = []

    async def wait(r: InferenceRequest) -> None:
        await fc.enqueue_and_wait(r)
        order.append(r.request_id)

    async def arrive(*requests: InferenceRequest) -> list[asyncio.Task[None]]:
        tasks = [asyncio.ensure_future(wait(r)) for r in requests]
        await asyncio.sleep(0)
        return tasks

    async def dispatch(count: int) -> None:
        fc.detector = Open()
        for _ in range(count):
            assert fc.dispatch_cycle()
        fc.detector = Shut()
        await asyncio.sleep(0)

    tasks = await arrive(request("a0", "a"))
    await dispatch(1)  # a: 10 tokens
    tasks += await arrive(*(request(f"b{i}", "b") for i in range(8)))
    await dispatch(4)  # b alone: 40 tokens, 4 still waiting
    tasks += await arrive(*(request(f"a{i}", "a") for i in range(1, 4)))
    fc.detector = Open()
    while fc.length:
        assert fc.dispatch_cycle()
    await asyncio.gather(*tasks)
    await fc.stop()
    assert order == ["a0", "b0", "b1", "b2", "b3", "a1", "b4", "a2", "b5", "a3", "b6", "b7"]


async def test_the_controller_reads_the_plugins_clock() -> None:
    """Queue times (FCFS order, the queue-duration metric) are on the EPP's clock: model time
    in a virtual-time benchmark, where wall time would order requests by when the host ran them."""
    text = CONFIG.format(fairness="global-strict-fairness-policy", ordering="fcfs-ordering-policy")
    context = PluginContext(EppMetrics(), clock=lambda: 42.0)
    director, _ = build_director(load_config(text), Datastore(), context)
    fc = director.flow_control
    assert fc is not None
    waiting = asyncio.ensure_future(fc.enqueue_and_wait(request("r", "t")))  # no endpoint: it waits
    await asyncio.sleep(0)
    head = fc.bands[0].flows["t"].head()
    assert head is not None and head.enqueued == 42.0
    await fc.stop()
    with pytest.raises(RequestError, match="flow controller is not running"):
        await waiting
