"""Flow control reads the pool's saturation per stage, as llm-d's router: `prefill` over the
endpoints that prefill, `decode` over those that decode (unlabelled endpoints decode), and gates
dispatch on `effective`, the larger. A P/D pool whose prefill half is full waits even though the
pool as a whole reads half full. `--metrics-aliases llm-d` exports each stage under llm-d's
`llm_d_epp_flow_control_pool_saturation{stage}`; GIE's name carries the effective value alone."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from types import MappingProxyType

import yaml

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.datastore.roles import ROLE_LABEL
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.saturation import split_stages
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from tests.unit.flowcontrol.flow_helpers import queued_request
from tests.unit.plugin_helpers import endpoint

CONFIG = yaml.safe_dump(
    {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "featureGates": ["flowControl"],
        "plugins": [
            {"type": "queue-scorer"},
            {
                "type": "utilization-detector",
                "parameters": {"queueDepthThreshold": 4, "metricsStalenessThreshold": "1h"},
            },
        ],
        "saturationDetector": {"pluginRef": "utilization-detector"},
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
        "flowControl": {"defaultRequestTTL": "10s"},
    }
)


def pool(roles: dict[str, str | None], metrics: EppMetrics) -> tuple[FlowController, Datastore]:
    """A flow controller over endpoints named by their role (None: unlabelled)."""
    datastore = Datastore()
    for i, (name, role) in enumerate(roles.items()):
        labels = {} if role is None else {ROLE_LABEL: role}
        datastore.upsert(
            EndpointSpec(name=name, address=f"10.0.0.{i + 1}", port=8000, labels=MappingProxyType(labels))
        )
        datastore.get(name).metrics.update_time = time.monotonic()  # type: ignore[union-attr]
    context = PluginContext(metrics, random.Random(0), time.monotonic)
    director, _ = build_director(load_config(CONFIG), datastore, context)
    assert director.flow_control is not None
    return director.flow_control, datastore


def queue(datastore: Datastore, name: str, waiting: int) -> None:
    found = datastore.get(name)
    assert found is not None
    found.metrics.waiting_queue_size = waiting


def gauge(metrics: EppMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"inference_pool": "standalone", **labels})


def test_stages_split_by_role_as_llm_d() -> None:
    roles = {
        "p": "prefill", "ep": "encode-prefill", "d": "decode", "none": None, "empty": "",
        "pd": "prefill-decode", "both": "both", "epd": "encode-prefill-decode", "e": "encode",
        "odd": "sidecar",
    }  # fmt: skip
    endpoints = [endpoint(n, labels={} if r is None else {ROLE_LABEL: r}) for n, r in roles.items()]
    prefill, decode = split_stages(endpoints)
    assert [e.name for e in prefill] == ["p", "ep", "pd", "both", "epd"]
    assert [e.name for e in decode] == ["d", "none", "empty", "pd", "both", "epd"]


async def test_a_full_prefill_stage_holds_dispatch_though_the_pool_reads_half_full() -> None:
    metrics = EppMetrics(aliases=["llm-d"])
    fc, datastore = pool({"prefill-0": "prefill", "decode-0": "decode"}, metrics)
    queue(datastore, "prefill-0", 4)  # 4 / queueDepthThreshold 4: full
    assert fc.stage_saturation() == {"prefill": 1.0, "decode": 0.0, "effective": 1.0}
    waiting = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("r", "t")))
    await asyncio.sleep(0.05)
    assert not waiting.done() and fc.length == 1  # the whole pool (0.5) would have let it through
    stage = "llm_d_epp_flow_control_pool_saturation"
    assert gauge(metrics, stage, stage="prefill") == 1.0
    assert gauge(metrics, stage, stage="decode") == 0.0
    assert gauge(metrics, stage, stage="effective") == 1.0
    assert gauge(metrics, "inference_extension_flow_control_pool_saturation") == 1.0
    queue(datastore, "prefill-0", 2)
    async with asyncio.timeout(10):
        await waiting
    assert gauge(metrics, stage, stage="effective") == 0.5
    await fc.stop()


async def test_an_unlabelled_pool_has_a_decode_stage_only() -> None:
    metrics = EppMetrics(aliases=["llm-d"])
    fc, datastore = pool({"a": None, "b": None}, metrics)
    queue(datastore, "a", 2)
    assert fc.stage_saturation() == {"decode": 0.25, "effective": 0.25}
    stage = "llm_d_epp_flow_control_pool_saturation"
    assert gauge(metrics, stage, stage="prefill") is None  # no series for a stage without endpoints
    assert gauge(metrics, stage, stage="decode") == gauge(metrics, stage, stage="effective") == 0.25
    await fc.stop()


async def test_a_pool_of_encoders_only_reads_as_a_whole() -> None:
    metrics = EppMetrics(aliases=["llm-d"])
    fc, datastore = pool({"e": "encode"}, metrics)
    queue(datastore, "e", 1)
    assert fc.stage_saturation() == {"effective": 0.25}
    await fc.stop()


async def test_gies_name_only_by_default() -> None:
    metrics = EppMetrics()
    fc, _ = pool({"p": "prefill", "d": "decode"}, metrics)
    assert gauge(metrics, "inference_extension_flow_control_pool_saturation") == 0.0
    assert gauge(metrics, "llm_d_epp_flow_control_pool_saturation", stage="effective") is None
    await fc.stop()


def test_a_pool_relabelled_with_roles_is_split_at_the_next_reading() -> None:
    """An unlabelled pool is read whole, without splitting it (the datastore knows no endpoint
    has a role: `Datastore.staged`); relabelling an endpoint `prefill` in place (its load and
    metrics kept) splits the pool from the next reading, and taking the role off joins it again."""
    metrics = EppMetrics()
    fc, datastore = pool({"a": None, "b": None}, metrics)
    assert not datastore.staged
    queue(datastore, "a", 4)  # full
    assert fc.stage_saturation() == {"decode": 0.5, "effective": 0.5}
    spec = datastore.get("a").spec  # type: ignore[union-attr]
    datastore.upsert(replace(spec, labels=MappingProxyType({ROLE_LABEL: "prefill"})))
    assert datastore.staged
    assert fc.stage_saturation() == {"prefill": 1.0, "decode": 0.0, "effective": 1.0}
    datastore.upsert(spec)
    assert not datastore.staged
    assert fc.stage_saturation() == {"decode": 0.5, "effective": 0.5}
    datastore.remove("a")
    datastore.remove("b")
    assert fc.stage_saturation() == {"effective": 1.0}  # an empty pool: no stage


async def test_a_p_d_pools_stale_endpoints_are_counted_over_both_stages() -> None:
    """`llm_d_epp_flow_control_stale_endpoints` tells a stall from a metrics collection failure
    apart from overload: in a P/D pool whose prefill endpoints have no metrics the prefill stage
    reads full and holds dispatch, so the gauge counts them, though the decode stage, read after
    it, has none stale. An endpoint serving both stages is one endpoint, counted once."""
    metrics = EppMetrics(aliases=["llm-d"])
    fc, datastore = pool({"prefill-0": "prefill", "both-0": "prefill-decode", "decode-0": "decode"}, metrics)
    for name in ("prefill-0", "both-0"):
        datastore.get(name).metrics.update_time = 0.0  # type: ignore[union-attr]  # never scraped
    assert fc.stage_saturation() == {"prefill": 1.0, "decode": 0.5, "effective": 1.0}
    stale = metrics.registry.get_sample_value(
        "llm_d_epp_flow_control_stale_endpoints", {"detector": "utilization-detector"}
    )
    assert stale == 2.0
    await fc.stop()
