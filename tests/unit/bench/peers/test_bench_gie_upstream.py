"""Upstream's approximate-index lifecycle: a restarted pod keeps its entries until a sweep."""

from __future__ import annotations

from pathlib import Path

from epp.bench.churn import Churn
from epp.bench.peers.gie_approx_prefix_cache_producer import SWEEP_INTERVAL, GieApproxPrefixCacheProducer
from epp.bench.virtual import VirtualCluster, VirtualRun
from epp.bench.workload import BenchRequest
from epp.config.loader import load_config_file
from epp.datastore import Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requests.parser import parse_request
from epp.scheduling.prefix.params import PrefixIndexParams
from epp.sim.profiles import TINY_TEST

CONFIG = load_config_file(Path(__file__).parents[4] / "bench" / "configs" / "gie-upstream.yaml")
ANY = parse_request(b'{"model": "m", "prompt": "hi"}', "/v1/completions", {}, "r")
SYSTEM = " ".join(["alpha", "beta", "gamma", "delta"] * 16)


def chat(index: int, arrival: float) -> BenchRequest:
    return BenchRequest(index, arrival, "g", 4, messages=(("system", SYSTEM), ("user", f"question {index}")))


def held_after_restart(second_arrival: float) -> tuple[int, int, int]:
    """(blocks the index holds for the pod before its restart, for the endpoint that replaced
    it when the next request is scheduled, the prompt tokens that request found cached)."""
    cluster = VirtualCluster(endpoints=2, profile=TINY_TEST, churn=Churn(startup=0.5))
    run = VirtualRun([chat(0, 0.0), chat(1, second_arrival)], CONFIG, cluster)
    producer = next(p for p in run.plugins if isinstance(p, GieApproxPrefixCacheProducer))
    held: list[int] = []

    def endpoint() -> Endpoint:
        found = run.datastore.get(run.records[0].endpoint)
        assert found is not None
        return found

    def restart(now: float, _: None) -> None:
        held.append(producer.index.blocks_held(endpoint()))
        run.restart(now, int(endpoint().name.rsplit("-", 1)[1]))

    def after_second(now: float, _: None) -> None:
        held.append(producer.index.blocks_held(endpoint()))

    run._push(1.0, restart, None)
    run._push(second_arrival + 1e-6, after_second, None)
    run.run()
    return held[0], held[1], run.records[1].cached_tokens


def test_a_pod_back_before_the_sweep_is_believed_to_hold_what_it_held() -> None:
    before, after, cached = held_after_restart(3.0)
    assert before > 0 and after >= before
    assert cached == 0  # the engine restarted empty: the index was wrong


def test_the_sweep_drops_a_pod_absent_at_its_tick_and_keeps_one_that_returned() -> None:
    now = [0.0]
    plugin = GieApproxPrefixCacheProducer(
        "p", PrefixIndexParams(), PluginContext(EppMetrics(), clock=lambda: now[0])
    )
    specs = [EndpointSpec(f"pod-{i}", f"10.0.0.{i}", 8000, models=frozenset({"m"})) for i in range(2)]
    gone = [Endpoint(spec) for spec in specs]
    for endpoint in gone:
        plugin.index.add(endpoint, [1, 2, 3], 100)
        plugin.endpoint_removed(endpoint)
    back = Endpoint(specs[0])
    now[0] = 10.0  # pod-0 is back before the tick: its entries follow it
    plugin.prepare(ANY, [back])
    assert plugin.index.blocks_held(back) == 3
    now[0] = SWEEP_INTERVAL + 1.0  # pod-1 was absent at the tick: swept
    plugin.prepare(ANY, [back])
    late = Endpoint(specs[1])
    plugin.prepare(ANY, [back, late])
    assert plugin.index.blocks_held(back) == 3 and plugin.index.blocks_held(late) == 0
    assert plugin.index.endpoints() == [back]
