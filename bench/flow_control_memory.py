"""What 100,000 distinct fairness ids cost flow control: every request waits in its own flow (the
pool saturated), then the pool frees up and all are dispatched. Reports the memory epp/ code holds
at the peak and after (tracemalloc, filtered to epp/), the process's peak RSS, the flows left and
the flow-control series on /metrics.

    .venv/bin/python bench/flow_control_memory.py [--tenants 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import time
import tracemalloc
from types import MappingProxyType

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.flowcontrol.controller import bound_fairness_id
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requests import ApiKind, InferenceRequest

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: concurrency-detector
  parameters: {maxConcurrency: 1000000}
saturationDetector: {pluginRef: concurrency-detector}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
flowControl:
  defaultPriorityBand: {fairnessPolicyRef: round-robin-fairness-policy}
"""


async def main(tenants: int) -> None:
    metrics = EppMetrics()
    datastore = Datastore()
    director, _ = build_director(load_config(CONFIG), datastore, PluginContext(metrics))
    controller = director.flow_control
    assert controller is not None
    ours = [tracemalloc.Filter(True, "*/epp/*")]
    gc.collect()
    tracemalloc.start()
    base = sum(s.size for s in tracemalloc.take_snapshot().filter_traces(ours).statistics("filename"))

    async def one(i: int) -> None:
        request = InferenceRequest(request_id=str(i), api=ApiKind.COMPLETIONS, path="", model="m", headers={})
        request.fairness_id = bound_fairness_id(f"tenant-{i}")
        request.body_size = 1000
        await controller.enqueue_and_wait(request)

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one(i)) for i in range(tenants)]
    await asyncio.sleep(0)  # every request queued (the pool is empty: saturated)
    queued = time.perf_counter() - started
    flows = len(controller.bands[0].flows)
    peak = sum(s.size for s in tracemalloc.take_snapshot().filter_traces(ours).statistics("filename"))
    datastore.upsert(
        EndpointSpec(name="a", address="10.0.0.1", port=1, models=frozenset(), labels=MappingProxyType({}))
    )
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    drained = time.perf_counter() - started
    del tasks
    gc.collect()
    after = sum(s.size for s in tracemalloc.take_snapshot().filter_traces(ours).statistics("filename"))
    tracemalloc.stop()
    series = sum(
        len(m.samples)
        for m in metrics.registry.collect()
        if m.name.startswith("inference_extension_flow_control")
    )
    print(
        f"tenants {tenants:,}: queued in {queued:.1f} s, {flows:,} flows; dispatched all in {drained:.1f} s"
    )
    print(f"epp/ memory: {(peak - base) / 1e6:.1f} MB while queued, {(after - base) / 1e6:.2f} MB after")
    print(f"flows left {len(controller.bands[0].flows)}, flow-control samples on /metrics {series:,}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB (tracemalloc on)")
    await controller.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().tenants))
