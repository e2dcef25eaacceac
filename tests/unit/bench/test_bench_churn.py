"""Pods restarting and scaling in virtual time: the seeded schedule, and what a pool change does to
the engines, the EPP's indexes and the requests in flight."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from epp.bench.churn import Churn, ChurnEvent, ScaleStep, schedule
from epp.bench.suite import Suite, SuiteRunner
from epp.bench.summary import summarize
from epp.bench.virtual import VirtualCluster, VirtualRun
from epp.bench.workload import BenchRequest, WorkloadSpec, generate, load_spec
from epp.config.loader import load_config, load_config_file
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer
from epp.sim.profiles import TINY_TEST

ROOT = Path(__file__).parents[3]
OURS = load_config_file(ROOT / "bench" / "configs" / "ours.yaml")
GIE = load_config()
ROUND_ROBIN = load_config_file(ROOT / "bench" / "configs" / "round-robin.yaml")
SYSTEM = " ".join(["alpha", "beta", "gamma", "delta"] * 16)  # 64 tokens: 4 full blocks of 16


def chat(index: int, arrival: float, out: int = 4) -> BenchRequest:
    messages = (("system", SYSTEM), ("user", f"question number {index}"))
    return BenchRequest(index, arrival, "g", out, messages=messages)


def cluster(endpoints: int = 2, **churn: float) -> VirtualCluster:
    return VirtualCluster(endpoints=endpoints, profile=TINY_TEST, churn=Churn(**churn))


def at(run: VirtualRun, when: float, action: object) -> None:
    """Schedule `action(now)` at model time `when` of the run."""
    run._push(when, lambda now, _: action(now), None)  # type: ignore[operator]


def pod_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


# ----- the schedule ------------------------------------------------------------------------------


def test_the_schedule_is_seeded_one_restart_per_slice_and_scale_steps_at_their_fraction() -> None:
    churn = Churn(seed=3, restarts=4, scale=(ScaleStep(at=0.5, endpoints=8),))
    events = schedule(churn, 40.0, 4)
    assert events == schedule(churn, 40.0, 4)
    assert events != schedule(churn.model_copy(update={"seed": 4}), 40.0, 4)
    restarts = [e for e in events if e.kind == "restart"]
    assert [int(e.at // 10) for e in restarts] == [0, 1, 2, 3]
    assert ChurnEvent(20.0, "scale", endpoints=8) in events
    assert [e.at for e in events] == sorted(e.at for e in events)
    # a restart picks one of the pods in the pool at its time: 4 before the step, 8 after
    assert all(e.pod < (4 if e.at < 20 else 8) for e in restarts)


def test_restarts_come_in_rounds_each_pod_once() -> None:
    events = schedule(Churn(seed=1, restarts=8), 80.0, 4)
    pods = [e.pod for e in events]
    assert sorted(pods[:4]) == sorted(pods[4:]) == [0, 1, 2, 3]
    assert pods != [e.pod for e in schedule(Churn(seed=2, restarts=8), 80.0, 4)]  # the order is seeded


def test_scale_steps_out_of_order_are_refused() -> None:
    with pytest.raises(ValidationError, match="scale steps must be in time order"):
        Churn(scale=({"at": 0.6, "endpoints": 2}, {"at": 0.2, "endpoints": 3}))


def test_suite_churn_workloads_load() -> None:
    restarts = load_spec(ROOT / "bench" / "workloads" / "restarts.yaml")
    scaling = load_spec(ROOT / "bench" / "workloads" / "scaling.yaml")
    assert restarts.churn is not None and restarts.churn.restarts > 0
    assert scaling.churn is not None and [s.endpoints for s in scaling.churn.scale] == [6, 3]


# ----- restarts ----------------------------------------------------------------------------------


def test_a_restarted_pod_comes_back_empty_and_the_precise_index_drops_its_blocks() -> None:
    """The first request leaves its prefix on a pod; that pod restarts; a later request with
    the same prefix finds it nowhere, where without the restart it is a cache hit."""
    requests = [chat(0, 0.0), chat(1, 3.0)]
    baseline = VirtualRun(requests, OURS, cluster(startup=0.5))
    baseline.run()
    assert baseline.records[1].cached_tokens >= 64

    run = VirtualRun(requests, OURS, cluster(startup=0.5))
    precise = next(p for p in run.plugins if isinstance(p, PrecisePrefixCacheProducer))
    seen: dict[str, object] = {}

    def restart(now: float) -> None:
        name = run.records[0].endpoint
        pod = run.servers[name].pod
        seen["before"] = pod in precise.cache.index.pods()
        run.restart(now, pod_number(name))
        seen["after"] = pod in precise.cache.index.pods()
        seen["in pool"] = run.datastore.get(name) is not None

    seen_back: dict[str, object] = {}

    def back(now: float) -> None:
        name = run.records[0].endpoint
        seen_back["back in pool"] = run.datastore.get(name) is not None
        seen_back["cached blocks"] = run.servers[name].engine.pool.num_cached()

    at(run, 1.0, restart)
    at(run, 2.0, back)
    run.run()
    assert seen == {"before": True, "after": False, "in pool": False}
    assert seen_back == {"back in pool": True, "cached blocks": 0}
    name = run.records[0].endpoint
    assert [what for _, what, pod in run.churn_log if pod == name] == ["left", "exited", "joined"]
    assert run.records[1].ok and run.records[1].cached_tokens == 0


def test_the_approximate_index_forgets_a_pod_that_leaves() -> None:
    run = VirtualRun([chat(0, 0.0), chat(1, 3.0)], GIE, cluster(startup=0.5))
    approximate = next(p for p in run.plugins if isinstance(p, ApproxPrefixCacheProducer))
    held: list[int] = []

    def restart(now: float) -> None:
        endpoint = run.datastore.get(run.records[0].endpoint)
        assert endpoint is not None
        held.append(approximate.index.blocks_held(endpoint))
        run.restart(now, pod_number(endpoint.name))
        held.append(approximate.index.blocks_held(endpoint))

    at(run, 1.0, restart)
    run.run()
    assert held[0] > 0 and held[1] == 0


def test_a_restart_of_a_pod_already_down_is_skipped() -> None:
    run = VirtualRun([chat(0, 0.0), chat(1, 3.0)], GIE, cluster(startup=2.0))
    at(run, 1.0, lambda now: run.restart(now, 0))
    at(run, 1.5, lambda now: run.restart(now, 0))
    run.run()
    assert [what for _, what, pod in run.churn_log if pod == "sim-0"] == [
        "left",
        "exited",
        "restart skipped: already down",
        "joined",
    ]


# ----- requests in flight on a pod that leaves --------------------------------------------------


@pytest.mark.parametrize(("timeout", "error"), [(30.0, None), (0.0, "shutdown")])
def test_requests_in_flight_drain_within_the_shutdown_timeout_else_are_aborted(
    timeout: float, error: str | None
) -> None:
    """vLLM's --shutdown-timeout: in-flight requests finish on the leaving pod; 0 aborts them
    (the client's stream is cut, an error) and the EPP releases their load."""
    run = VirtualRun([chat(0, 0.0, out=400)], GIE, cluster(endpoints=1, shutdown_timeout=timeout))
    left = run.datastore.get("sim-0")
    at(run, 0.05, lambda now: run.restart(now, 0))
    run.run()
    record = run.records[0]
    assert record.endpoint == "sim-0" and record.error == error
    assert (record.output_tokens == 400) is (error is None)
    exited = next(t for t, what, _ in run.churn_log if what == "exited")
    assert exited == (record.done if error is None else 0.05)
    assert left is not None and left.inflight_requests == 0


def test_a_request_finishing_in_the_step_the_shutdown_cuts_is_aborted_not_lost() -> None:
    """The engine drops a request from its queues when the step that ends it starts; if the drain
    deadline falls inside that step, the step never ends, so the request is aborted with the rest
    (it used to be lost with the step, and the run waited for it forever)."""
    plain = VirtualRun([chat(0, 0.0, out=400)], GIE, cluster(endpoints=1))
    plain.run()
    done = plain.records[0].done
    assert done is not None
    last_step_start = done - plain.itl[-1]
    deadline = (last_step_start + done) / 2
    run = VirtualRun([chat(0, 0.0, out=400)], GIE, cluster(endpoints=1, shutdown_timeout=deadline - 0.05))
    left = run.datastore.get("sim-0")
    at(run, 0.05, lambda now: run.restart(now, 0))
    lost = "the request neither finished nor failed"
    at(run, done + 60.0, lambda now: pytest.fail(lost) if run.records[0].error is None else None)
    run.run()
    record = run.records[0]
    assert record.error == "shutdown" and record.output_tokens == 0
    assert left is not None and left.inflight_requests == 0


def test_nothing_is_routed_to_a_pod_after_it_leaves() -> None:
    run = VirtualRun([chat(i, i * 0.05) for i in range(60)], ROUND_ROBIN, cluster(startup=1.0))
    at(run, 0.52, lambda now: run.restart(now, 0))
    run.run()
    left = next(t for t, what, _ in run.churn_log if what == "left")
    back = next(t for t, what, _ in run.churn_log if what == "joined")
    routed_there = [run.routed_at[r.index] for r in run.records if r.endpoint == "sim-0" and r.ok]
    assert routed_there and not [t for t in routed_there if left <= t < back]
    assert all(r.ok for r in run.records)


# ----- scaling -----------------------------------------------------------------------------------


def test_scaling_out_adds_empty_pods_that_serve_and_scaling_in_removes_the_newest() -> None:
    requests = [chat(i, i * 0.02) for i in range(150)]
    run = VirtualRun(requests, ROUND_ROBIN, cluster(1))
    at(run, 1.0, lambda now: run.scale(now, 3))
    at(run, 2.0, lambda now: run.scale(now, 2))
    result = run.run()
    assert result.endpoints == ["sim-0", "sim-1", "sim-2"]
    served = {name: [r for r in run.records if r.endpoint == name] for name in result.endpoints}
    # (an arrival at 2.0 comes before the scale step scheduled for the same time)
    assert served["sim-2"] and all(1.0 <= run.routed_at[r.index] <= 2.0 for r in served["sim-2"])
    assert served["sim-1"][0].cached_tokens == 0  # it joined with an empty cache
    assert [e.name for e in run.datastore.endpoints()] == ["sim-0", "sim-1"]
    assert all(r.ok for r in run.records)


def test_a_churn_workload_is_deterministic() -> None:
    spec = WorkloadSpec.model_validate(
        {
            "name": "tiny-churn",
            "seed": 1,
            "api": "chat",
            "data": {
                "type": "shared_prefix",
                "num_groups": 4,
                "num_prompts_per_group": 10,
                "system_prompt_len": 64,
                "question_len": 8,
                "output_len": 8,
            },
            "load": {"rates": [40]},
            "churn": {"seed": 2, "restarts": 3, "startup": 0.2, "scale": [{"at": 0.5, "endpoints": 3}]},
        }
    )
    requests = generate(spec, 40)
    base = replace(cluster(2), churn=spec.churn)
    first, second = VirtualRun(requests, OURS, base), VirtualRun(requests, OURS, base)
    assert summarize(first.run()) == summarize(second.run())
    assert first.churn_log == second.churn_log
    assert [r.endpoint for r in first.records] == [r.endpoint for r in second.records]
    assert sum(what == "joined" for _, what, _ in first.churn_log) >= 2


def test_real_time_refuses_a_churn_workload_before_starting_anything() -> None:
    runner = SuiteRunner(Suite.load(ROOT / "bench" / "suite.yaml"), engine="realtime", workloads=["restarts"])
    with pytest.raises(ValueError, match="restarts: workloads with churn run in virtual time only"):
        runner.run()
