"""The virtual-time engine with GIE's flow-control layer on: requests wait in the real flow
controller's queues (tenants by fairness id, bands by InferenceObjective) in model time."""

from __future__ import annotations

from epp.bench.records import RunResult
from epp.bench.virtual import VirtualCluster, VirtualRun
from epp.bench.workload import BenchRequest
from epp.config.loader import load_config
from epp.sim.profiles import TINY_TEST
from tests.unit.flowcontrol.flow_helpers import flow_control_config

ONE_SERVER = VirtualCluster(endpoints=1, profile=TINY_TEST)


def config(fairness: str = "round-robin-fairness-policy", ttl: str = "0s") -> str:
    """Flow control releasing one request at a time (one in flight on the one endpoint)."""
    return flow_control_config(
        {"defaultRequestTTL": ttl, "defaultPriorityBand": {"fairnessPolicyRef": fairness}}
    )


def request(index: int, arrival: float, tenant: str = "", objective: str = "", out: int = 4) -> BenchRequest:
    prompt = (f"request {index} asks a question of some length about the weather today",)
    return BenchRequest(index, arrival, f"r{index}", out, prompt=prompt, tenant=tenant, objective=objective)


def flood_then_one(tag: str, flood: str, late: str) -> list[BenchRequest]:
    """Five requests of `flood` at once, then one of `late` a moment after."""
    requests = [request(i, 0.0, **{tag: flood}) for i in range(5)]
    return [*requests, request(5, 0.001, **{tag: late})]


def dispatch_order(result: RunResult) -> list[int]:
    """One request in flight at a time: the order of first tokens is the order of dispatch."""
    served = [r for r in result.records if r.first_token is not None]
    return [r.index for r in sorted(served, key=lambda r: r.first_token or 0)]


def test_tenants_take_turns_with_round_robin_and_wait_in_line_without_it() -> None:
    requests = flood_then_one("tenant", "noisy", "quiet")
    fair = VirtualRun(requests, load_config(config()), ONE_SERVER).run()
    assert dispatch_order(fair) == [0, 5, 1, 2, 3, 4]
    strict = VirtualRun(requests, load_config(config("global-strict-fairness-policy")), ONE_SERVER).run()
    assert dispatch_order(strict) == [0, 1, 2, 3, 4, 5]
    # The wait in the EPP's queue is part of the time to first token.
    assert all(r.ok for r in fair.records)
    assert fair.records[5].ttft is not None and strict.records[5].ttft is not None
    assert fair.records[5].ttft < strict.records[5].ttft


def test_a_higher_band_goes_first_by_objective() -> None:
    requests = flood_then_one("objective", "sheddable", "critical")
    objectives = {"critical": 1, "sheddable": -1}
    result = VirtualRun(requests, load_config(config()), ONE_SERVER, objectives).run()
    assert dispatch_order(result) == [0, 5, 1, 2, 3, 4]
    unknown = VirtualRun(requests, load_config(config()), ONE_SERVER).run()  # all priority 0
    assert dispatch_order(unknown) == [0, 1, 2, 3, 4, 5]


def test_requests_queued_past_their_ttl_get_503_in_model_time() -> None:
    requests = [request(i, 0.0, out=60) for i in range(3)]
    lone = VirtualRun(requests[:1], load_config(config()), ONE_SERVER).run()
    service = lone.records[0].e2e
    assert service is not None and service > 0.05
    ttl = f"{service * 1.5 * 1000:.0f}ms"  # the second fits in the TTL, the third does not
    result = VirtualRun(requests, load_config(config(ttl=ttl)), ONE_SERVER).run()
    assert [r.error for r in result.records] == [None, None, "ServiceUnavailable"]
    assert dispatch_order(result) == [0, 1]


def test_runs_with_flow_control_are_deterministic() -> None:
    requests = [request(i, i * 0.002, tenant=f"t{i % 3}") for i in range(30)]
    first, second = (VirtualRun(requests, load_config(config()), ONE_SERVER).run() for _ in range(2))
    assert [(r.first_token, r.done, r.endpoint) for r in first.records] == [
        (r.first_token, r.done, r.endpoint) for r in second.records
    ]
    assert all(r.ok for r in first.records)


PRIORITY_FIELD_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: vllm-priority-field
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
"""


def test_the_priority_body_field_orders_a_priority_server_queue() -> None:
    """No flow control: the server queues (one sequence at a time); with `vllm-priority-field`
    and vLLM's priority policy the critical request, sent last, is served right after the one
    already running. Under FCFS the server refuses it, as vLLM does (400)."""
    requests = flood_then_one("objective", "standard", "critical")  # sheddable would be shed
    objectives = {"critical": 1, "standard": 0}
    one_at_a_time = TINY_TEST.with_overrides(max_num_seqs=1)
    by_priority = VirtualCluster(endpoints=1, profile=one_at_a_time, scheduling_policy="priority")
    result = VirtualRun(requests, load_config(PRIORITY_FIELD_CONFIG), by_priority, objectives).run()
    assert dispatch_order(result) == [0, 5, 1, 2, 3, 4]
    without_field = PRIORITY_FIELD_CONFIG.replace("- type: vllm-priority-field\n", "")
    result = VirtualRun(requests, load_config(without_field), by_priority, objectives).run()
    assert dispatch_order(result) == [0, 1, 2, 3, 4, 5]
    fcfs = VirtualCluster(endpoints=1, profile=one_at_a_time)
    result = VirtualRun(requests, load_config(PRIORITY_FIELD_CONFIG), fcfs, objectives).run()
    assert [r.error for r in result.records] == [None] * 5 + ["priority_not_enabled"]
