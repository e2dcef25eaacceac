"""Every EPP metric that llm-d's shipped dashboards, PrometheusRules, KEDA ScaledObjects and
observability guides query (tests/data/llmd_metrics/references.yaml: source repository, commit and
path of each) is exported by `epp serve --metrics-aliases llm-d`, with the labels those queries
select or group by; or it is in NOT_EXPORTED with the reason. The registry is the one `epp serve`
builds (EppMetrics with llm-d's names, the pool gauges, flow control, the scraper's poll errors,
the ext_proc stream metrics of --enable-grpc-stream-metrics, the KV index's of the precise prefix
producer, an inflight-load-producer's gauges), each family given one sample by what records it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import MappingProxyType

import grpc
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.kvblocks import KVIndexMetrics
from epp.datastore import Datastore, EndpointSpec
from epp.extproc.stream_metrics import StreamMetrics
from epp.metrics.exporter import EppMetrics
from epp.requests import Usage
from tests.unit.flowcontrol.flow_helpers import built, flow_control_config, queued_request
from tests.unit.plugin_helpers import FakeClock

REFERENCES = Path(__file__).parents[2] / "data" / "llmd_metrics" / "references.yaml"

# Referenced, not exported, and why (each checked to be absent, so exporting one fails this test
# until it leaves this list).
NOT_EXPORTED = {
    "llm_d_epp_kv_cache_events_pool_queue_depth": (
        "llm-d queues KV events to a pool of worker shards; ours applies each message on the event "
        "loop as it is read, and what waits is inside the ZMQ socket, which cannot be counted"
    ),
    "llm_d_epp_prefix_predicted_cached_tokens": "not in llm-d-router ebab687 (added after it)",
    "llm_d_epp_prefix_prompt_tokens": "not in llm-d-router ebab687 (added after it)",
}

SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def references() -> list[tuple[str, str, tuple[str, ...]]]:
    """(source path, metric, labels) of every reference."""
    doc = yaml.safe_load(REFERENCES.read_text())
    found = []
    for source in doc["sources"]:
        assert len(source["commit"]) == 40 and source["repo"] and source["path"]
        for ref in source["references"]:
            found.append((source["path"], ref["metric"], tuple(ref["labels"])))
    return found


def family_of(metric: str, exported: dict[str, set[str]]) -> str:
    """The exported sample name a query's metric name is (a counter keeps its _total)."""
    if metric in exported:
        return metric
    for suffix in SUFFIXES:
        if metric.endswith(suffix) and metric.removesuffix(suffix) in exported:
            return metric.removesuffix(suffix)
    return metric


async def llm_d_page() -> dict[str, set[str]]:
    """Sample name -> the label names its samples carry, after one of everything."""
    metrics = EppMetrics(aliases=["llm-d"])
    series = metrics.series("m", "m")
    flow = series.flow("default-flow", 0)  # llm-d's per-request families, by flow
    assert flow is not None
    for recorded in (series, flow):
        recorded.scheduled(*((0, 100, "pod-a", "ns", 8000) if recorded is series else (100,)))
        recorded.finished(0.5, 10, Usage(prompt_tokens=5, completion_tokens=3))
        recorded.scheduled(*((0, 100, "pod-a", "ns", 8000) if recorded is series else (100,)))  # running
        recorded.error("NotFound")
    metrics.scheduler_e2e.observe(0.001)
    metrics.plugin_duration.labels("Filter", "decode-filter", "decode-filter").observe(0.0001)
    metrics.prefix_index("p", "approx-prefix-cache-producer", lambda: 1)(0.5, 64)
    metrics.disagg_decisions.labels("disagg", "disagg-profile-handler", "m", "decode-only").inc()
    metrics.datalayer_poll_errors.labels("metrics-data-source").inc()
    metrics.datalayer_extract_errors.labels("metrics-data-source", "core-metrics-extractor").inc()
    datastore = Datastore()
    endpoint = datastore.upsert(EndpointSpec("pod-a", "10.0.0.1", 8000, labels=MappingProxyType({})))
    endpoint.metrics.update_time = time.monotonic()
    metrics.watch_pool(datastore, "pool")
    StreamMetrics(metrics.registry).finished(grpc.StatusCode.OK, 0.1)
    kv = KVIndexMetrics.for_registry(metrics.registry)
    for counter in (kv.lookups, kv.admissions, kv.evictions):
        counter.inc()
    kv.lookup_latency.observe(0.001)
    kv.messages.labels("pod-a").inc()
    kv.reconnections.labels("pod-a").inc()
    kv.zmq_errors.labels("pod-a", "recv").inc()
    load = (("pod-a", "ns", "inflight-load-producer", "t", "0"), 1, 10)
    metrics.inflight_load.sources.append(lambda: [load])
    fc, _, detector = built(flow_control_config({}), FakeClock(), metrics)
    detector.value = 0.0
    await fc.enqueue_and_wait(queued_request("dispatched", "t"))
    detector.value = 1.0  # full: the next one waits
    waiting = asyncio.ensure_future(fc.enqueue_and_wait(queued_request("queued", "t")))
    await asyncio.sleep(0)
    page: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            page.setdefault(sample.name, set()).update(sample.labels)
    detector.value = 0.0
    await waiting
    await fc.stop()
    return page


async def test_every_referenced_epp_metric_is_exported_under_llm_d_names() -> None:
    page = await llm_d_page()
    missing = []
    for path, metric, labels in references():
        name = family_of(metric, page)
        if any(metric.startswith(skipped) for skipped in NOT_EXPORTED):
            assert name not in page, f"{metric} is exported now: take it out of NOT_EXPORTED"
            continue
        if name not in page:
            missing.append(f"{metric} ({path})")
        elif not set(labels) - {"le"} <= page[name]:
            missing.append(f"{metric} labels {sorted(set(labels) - page[name] - {'le'})} ({path})")
    assert not missing, missing


def test_the_references_name_each_source_by_commit_and_path() -> None:
    refs = references()
    assert len({path for path, _, _ in refs}) == 7 and len(refs) > 40
