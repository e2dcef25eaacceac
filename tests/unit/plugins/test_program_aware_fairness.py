"""`program-aware-fairness`: llm-d's LAS over programs, through the flow controller of llm-d's own
sample config (deploy/config/sim-program-aware-config.yaml, loaded unchanged)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from epp.config.loader import load_config
from epp.metrics.exporter import EppMetrics
from epp.params.strict import ConfigError
from epp.plugins.program_aware_fairness import ProgramAwareFairness, jains_index
from epp.requests import InferenceRequest, Usage
from epp.scheduling.types import SchedulingResult
from tests.unit.flowcontrol.flow_helpers import UPSTREAM_CONFIGS, Queue, Saturation, built, queued_request
from tests.unit.flowcontrol.test_flow_control import finish, make_harness, routed
from tests.unit.plugin_helpers import FakeClock, context, plugin

UPSTREAM = UPSTREAM_CONFIGS / "llmd-router-ebab687__deploy__config__sim-program-aware-config.yaml"
RESULT = SchedulingResult(profile_results={}, primary_profile="default")


def served(policy: ProgramAwareFairness, program: str, prompt: int, completion: int) -> None:
    """One request of `program` dispatched and completed with this usage."""
    request = queued_request("done", program)
    policy.pre_request(request, RESULT)
    policy.response_complete(request, RESULT, Usage(prompt_tokens=prompt, completion_tokens=completion))


async def test_the_least_served_program_goes_first_though_it_arrived_last() -> None:
    clock = FakeClock(0.0)
    fc, components, detector = built(UPSTREAM, clock)
    policy = components.plugins["program-aware-fairness"]
    assert isinstance(policy, ProgramAwareFairness)
    served(policy, "heavy", prompt=1000, completion=500)  # 2,000 weighted tokens
    served(policy, "light", prompt=10, completion=5)  # 20
    queue = Queue(fc)
    await queue.add(queued_request("h1", "heavy"))
    await queue.add(queued_request("h2", "heavy"))
    clock.now += 0.5  # heavy's head has waited 500 ms longer: the tiebreak weighs 0.2 against 0.8
    await queue.add(queued_request("l1", "light"))
    await queue.add(queued_request("l2", "light"))
    # Service is charged at completion, so light stays the least served while its requests run.
    assert await queue.drain(detector) == ["l1", "l2", "h1", "h2"]


async def test_with_equal_service_the_longest_waiting_head_goes_first() -> None:
    clock = FakeClock(0.0)
    fc, _, detector = built(UPSTREAM, clock)
    queue = Queue(fc)
    await queue.add(queued_request("a1", "a"))
    clock.now += 0.010
    await queue.add(queued_request("b1", "b"))
    clock.now += 0.010
    await queue.add(queued_request("a2", "a"))
    assert await queue.drain(detector) == ["a1", "b1", "a2"]  # a2 is younger than b1


async def test_the_head_wait_weight_can_outrank_service() -> None:
    config = UPSTREAM.read_text().replace(
        "- type: program-aware-fairness",
        "- type: program-aware-fairness\n  parameters: {lasWeightService: 0.1, lasWeightHeadWait: 1.0}",
    )
    clock = FakeClock(0.0)
    fc, components, detector = built(config, clock)
    policy = components.plugins["program-aware-fairness"]
    assert isinstance(policy, ProgramAwareFairness)
    served(policy, "heavy", prompt=1000, completion=0)
    queue = Queue(fc)
    await queue.add(queued_request("h1", "heavy"))
    clock.now += 0.5
    await queue.add(queued_request("l1", "light"))
    assert await queue.drain(detector) == ["h1", "l1"]


def test_attained_service_is_weighted_tokens_halving_every_half_life() -> None:
    clock = FakeClock(0.0)
    metrics = EppMetrics()
    policy = plugin(ProgramAwareFairness, {"lasHalfLifeSeconds": 60}, context(clock=clock, metrics=metrics))
    served(policy, "p", prompt=100, completion=50)
    state = policy.programs["p"]
    assert policy.service(state, clock.now) == 200.0
    clock.now += 120.0  # two half-lives
    assert policy.service(state, clock.now) == pytest.approx(50.0)
    served(policy, "p", prompt=10, completion=0)
    assert metrics.registry.get_sample_value(
        "llm_d_epp_program_aware_attained_service_tokens", {"program_id": "p"}
    ) == pytest.approx(60.0)
    timeless = plugin(ProgramAwareFairness, {"lasHalfLifeSeconds": 0}, context(clock=clock))
    served(timeless, "p", prompt=100, completion=50)
    clock.now += 1e6
    assert timeless.service(timeless.programs["p"], clock.now) == 200.0


def test_wait_metrics_and_jains_index() -> None:
    clock = FakeClock(0.0)
    metrics = EppMetrics()
    policy = plugin(ProgramAwareFairness, ctx=context(clock=clock, metrics=metrics))
    for program, waited in (("a", 0.010), ("b", 0.030)):
        request: InferenceRequest = queued_request("r", program)
        request.attributes["program-aware-fairness/enqueue-time"] = clock.now - waited
        policy.pre_request(request, RESULT)
    sample = metrics.registry.get_sample_value
    assert sample("llm_d_epp_program_aware_avg_wait_time_milliseconds", {"program_id": "a"}) == 10.0
    assert sample("llm_d_epp_program_aware_avg_wait_time_milliseconds", {"program_id": "b"}) == 30.0
    assert jains_index([10.0, 30.0]) == pytest.approx(0.8)  # 40^2 / (2 x 1,000)
    assert jains_index([10.0]) == 1.0
    assert policy.programs["a"].in_flight == 1 and policy.programs["a"].dispatched == 1


def test_idle_programs_are_forgotten_after_the_ttl_but_not_while_in_flight() -> None:
    clock = FakeClock(0.0)
    metrics = EppMetrics()
    policy = plugin(
        ProgramAwareFairness,
        {"evictionTtlSeconds": 10, "evictionSweepSeconds": 5},
        context(clock=clock, metrics=metrics),
    )
    served(policy, "idle", prompt=10, completion=10)
    policy.pre_request(queued_request("r", "running"), RESULT)  # never completes
    clock.now = 9.0  # the first sweep (due at 5 s) finds nothing idle for over 10 s
    policy.program("other")
    assert set(policy.programs) == {"idle", "running", "other"}
    clock.now = 12.0  # idle for 12 s, but the next sweep is due at 14 s
    policy.program("other")
    assert "idle" in policy.programs
    clock.now = 14.0
    policy.program("other")
    assert set(policy.programs) == {"running", "other"}
    assert (
        metrics.registry.get_sample_value(
            "llm_d_epp_program_aware_attained_service_tokens", {"program_id": "idle"}
        )
        is None
    )


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{strategy: wfq}", "unknown scoring strategy 'wfq': only \"las\" is supported"),
        ("{evictionSweepSeconds: 0}", "evictionSweepSeconds: Input should be greater than 0"),
        ("{lasWeightService: -1}", "lasWeightService: Input should be greater than or equal to 0"),
    ],
)
def test_bad_parameters_are_refused(parameters: str, message: str) -> None:
    config = UPSTREAM.read_text().replace(
        "- type: program-aware-fairness", f"- type: program-aware-fairness\n  parameters: {parameters}"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert message in str(caught.value)


def usage(prompt: int, completion: int) -> bytes:
    """A response body carrying the usage the model server reports."""
    return orjson.dumps({"usage": {"prompt_tokens": prompt, "completion_tokens": completion}})


async def test_through_ext_proc_completed_usage_decides_the_next_program() -> None:
    """The upstream config behind the EPP's ext_proc server: usage read from real responses is
    each program's service; queued requests of the least served program go first, and each
    dispatched request's queue wait is its program's average."""
    h, server, channel = await make_harness(config_text=UPSTREAM.read_text())
    detector = Saturation(0.0)
    h.flow_control.detector = detector
    h.add()
    try:
        for program, prompt, completion in (("heavy", 1000, 500), ("light", 10, 5)):
            call = await h.send(program)
            await routed(call)
            await finish(call, usage(prompt, completion))
        assert h.sample("llm_d_epp_program_aware_attained_service_tokens", program_id="heavy") == 2000.0
        detector.value = 1.0
        order: list[str] = []

        async def one(program: str) -> None:
            call = await h.send(program)
            await routed(call)
            order.append(program)
            await finish(call, usage(1, 1))

        tasks = []
        for program in ("heavy", "heavy", "light", "light"):
            tasks.append(asyncio.ensure_future(one(program)))
            await h.wait_queued(len(tasks))
        detector.value = 0.0
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert order == ["light", "light", "heavy", "heavy"]
        # The first two requests did not queue (no wait observed); the queued ones did.
        assert h.sample("llm_d_epp_program_aware_avg_wait_time_milliseconds", program_id="heavy") > 0
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()
