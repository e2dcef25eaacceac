"""`demand-sized-reservation`: pods kept for a protected class, sized to its demand, with hysteresis
and idle release; other requests filtered off them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from epp.config.build import build_components
from epp.config.loader import load_config
from epp.datastore import Endpoint
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.demand_sized_reservation import DemandPeak, DemandSizedReservation
from epp.requests import InferenceRequest
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import FakeClock, context, endpoints, plugin, request

BENCH_CONFIGS = Path(__file__).parents[3] / "bench" / "configs"
PARAMS = {
    "minPriority": 1,
    "requestsPerPod": 4,
    "headroom": 0.25,
    "window": "10s",
    "idleRelease": "5s",
    "maxPodsFraction": 0.75,
}


def reservation(clock: FakeClock, **overrides: Any) -> DemandSizedReservation:
    return plugin(DemandSizedReservation, {**PARAMS, **overrides}, context(clock=clock))


def prioritised(priority: int, **fields: Any) -> InferenceRequest:
    req = request(**fields)
    req.priority = priority
    return req


def route(plugin_: DemandSizedReservation, req: InferenceRequest, pool: list[Endpoint]) -> SchedulingResult:
    """Filter, score, take the best-scored survivor (first on ties), and count it as routed."""
    kept = plugin_.filter(req, list(pool))
    scores = plugin_.score(req, kept)
    chosen = kept[scores.index(max(scores))]
    result = SchedulingResult({"default": ProfileResult([chosen])}, "default")
    plugin_.pre_request(req, result)
    chosen.inflight_requests += 1
    return result


def finish(plugin_: DemandSizedReservation, req: InferenceRequest, result: SchedulingResult) -> None:
    result.targets[0].inflight_requests -= 1
    plugin_.response_complete(req, result, None)


def test_the_set_is_sized_to_the_peak_in_flight_with_headroom() -> None:
    clock, pool = FakeClock(0.0), endpoints(8)
    res = reservation(clock)
    assert res.filter(prioritised(-1), list(pool)) == pool  # nothing protected yet: nothing reserved
    routed = []
    for count in range(1, 21):
        req = prioritised(1)
        routed.append((req, route(res, req, pool)))
        # ceil(in flight x 1.25 / 4), at least 1, at most 0.75 x 8 = 6
        assert len(res.reserved) == min(max(1, -(-count * 5 // 16)), 6), count
    # every protected request went to a reserved pod
    assert {r.targets[0].name for _, r in routed} <= res.reserved.keys()


def test_growth_takes_the_pods_with_the_fewest_other_requests() -> None:
    clock, pool = FakeClock(0.0), endpoints(4)
    for e, busy in zip(pool, (9, 2, 7, 5), strict=True):
        e.inflight_requests = busy
    res = reservation(clock, requestsPerPod=1, headroom=0)
    route(res, prioritised(1), pool)
    assert res.reserved.keys() == {"e1"}
    route(res, prioritised(1), pool)  # e1 now carries a protected request: not counted as other load
    assert res.reserved.keys() == {"e1", "e3"}


def test_shrinking_waits_for_the_window_and_goes_one_pod_at_a_time() -> None:
    clock, pool = FakeClock(0.0), endpoints(8)
    res = reservation(clock)
    flights = [(req, route(res, req, pool)) for req in (prioritised(1) for _ in range(16))]
    assert len(res.reserved) == 5  # ceil(16 x 1.25 / 4)
    for req, result in flights[:6]:
        finish(res, req, result)  # 10 left: 4 pods would do, even with 1.5 x the headroom
    clock.now = 9.9
    res.filter(prioritised(-1), list(pool))
    assert len(res.reserved) == 5  # the peak of 16 is still in the window
    clock.now = 10.0
    res.filter(prioritised(-1), list(pool))
    assert len(res.reserved) == 4
    for req, result in flights[6:12]:
        finish(res, req, result)  # 4 left: 2 pods would do
    clock.now = 15.0
    res.filter(prioritised(-1), list(pool))
    assert len(res.reserved) == 4  # one resize per window
    clock.now = 20.0
    res.filter(prioritised(-1), list(pool))
    assert len(res.reserved) == 3
    clock.now = 30.0
    res.filter(prioritised(-1), list(pool))
    assert len(res.reserved) == 2
    clock.now = 40.0
    res.filter(prioritised(-1), list(pool))
    assert len(res.reserved) == 2  # what 4 in flight need: stays


def test_a_demand_at_a_boundary_keeps_its_pods() -> None:
    """6 in flight: 2 pods with the headroom (7.5 / 4), 3 with 1.5 times it (8.25 / 4); from 3 pods
    the set does not shrink, so the next request does not take a pod back."""
    clock, pool = FakeClock(0.0), endpoints(8)
    res = reservation(clock)
    flights = [(req, route(res, req, pool)) for req in (prioritised(1) for _ in range(9))]
    assert len(res.reserved) == 3
    for req, result in flights[:3]:
        finish(res, req, result)
    for now in (10.0, 20.0, 30.0):
        clock.now = now
        res.filter(prioritised(-1), list(pool))
        assert len(res.reserved) == 3


def test_a_demand_that_goes_up_again_grows_at_once() -> None:
    clock, pool = FakeClock(0.0), endpoints(8)
    res = reservation(clock)
    first = [(req, route(res, req, pool)) for req in (prioritised(1) for _ in range(4))]
    assert len(res.reserved) == 2
    for req, result in first:
        finish(res, req, result)
    clock.now = 1.0
    for _ in range(10):
        route(res, prioritised(1), pool)
    assert len(res.reserved) == 4  # ceil(10 x 1.25 / 4), not held back by the last resize


def test_an_idle_class_releases_every_pod_after_idle_release() -> None:
    clock, pool = FakeClock(0.0), endpoints(8)
    res = reservation(clock)
    flights = [(req, route(res, req, pool)) for req in (prioritised(1) for _ in range(8))]
    clock.now = 2.0
    for req, result in flights:
        finish(res, req, result)
    clock.now = 6.9
    assert len(res.filter(prioritised(-1), list(pool))) == 8 - len(res.reserved) == 5
    clock.now = 7.0
    assert res.filter(prioritised(-1), list(pool)) == pool
    assert not res.reserved
    # back: the pods it held, at once, those with the fewest other requests
    pool[0].inflight_requests, pool[1].inflight_requests = 3, 0
    for e in pool[2:]:
        e.inflight_requests = 5
    req = prioritised(1)
    result = route(res, req, pool)
    assert res.reserved.keys() == {"e1", "e0", "e2"} and result.targets[0].name == "e1"
    # and the demand a window later decides whether it keeps them
    clock.now = 17.0
    res.filter(prioritised(-1), list(pool))
    assert res.reserved.keys() == {"e1", "e2"}  # e1 serves the request; of the other two, e0 by name
    finish(res, req, result)


def test_the_filter_keeps_others_off_reserved_pods_and_the_scorer_prefers_them() -> None:
    clock, pool = FakeClock(0.0), endpoints(4)
    res = reservation(clock, maxPodsFraction=0.5)
    for _ in range(12):
        route(res, prioritised(2), pool)  # priority above minPriority is protected too
    assert len(res.reserved) == 2  # capped at 0.5 x 4
    other = res.filter(prioritised(0), list(pool))
    assert [e.name for e in other] == [e.name for e in pool if e.name not in res.reserved]
    assert res.score(prioritised(0), other) == [0.0, 0.0]
    protected = res.filter(prioritised(1), list(pool))
    assert protected == pool  # any pod, so a reserved pod filtered out elsewhere is no dead end
    # 1 - 0.5 x in flight / (2 x requestsPerPod) on reserved pods, 0.5 at the least; 0 elsewhere
    assert res.score(prioritised(1), protected) == [
        1.0 - 0.5 * min(1.0, e.inflight_requests / 8) if e.name in res.reserved else 0.0 for e in pool
    ]
    reserved = next(e for e in pool if e.name in res.reserved)
    reserved.inflight_requests = 20
    assert res.score(prioritised(1), [reserved]) == [0.5]
    reserved.inflight_requests = 0
    assert res.score(prioritised(1), [reserved]) == [1.0]


def test_a_reserved_pod_gone_unhealthy_is_replaced_and_trimmed_at_once_when_back_over_the_cap() -> None:
    clock, pool = FakeClock(0.0), endpoints(5)
    res = reservation(clock, maxPodsFraction=0.5)
    for _ in range(5):  # ceil(5 x 1.25 / 4) = 2 pods: the cap, 0.5 x 5 rounded down
        route(res, prioritised(1), pool)
    first = set(res.reserved)
    assert len(first) == 2
    sick = next(e for e in pool if e.name in first)
    sick.healthy = False
    ready = [e for e in pool if e is not sick]  # what the director offers while it is unhealthy
    # the next protected request finds one reserved pod able to serve: a replacement joins at once
    route(res, prioritised(1), ready)
    assert res.held() == 2 and len(res.reserved) == 3 and sick.name in res.reserved
    assert len(res.filter(prioritised(-1), list(ready))) == 2  # the others keep the rest
    # back: three healthy reserved pods break the cap of 2, so the quietest goes at once
    sick.healthy = True
    three = set(res.reserved)
    quietest = min(three, key=lambda n: (res.protected_on.get(n, 0), n))
    assert len(res.filter(prioritised(-1), list(pool))) == 3
    assert res.held() == len(res.reserved) == 2
    assert set(res.reserved) == three - {quietest}


def test_a_pool_of_one_is_shared_when_the_cap_leaves_nothing() -> None:
    clock, pool = FakeClock(0.0), endpoints(1)
    res = reservation(clock, maxPodsFraction=1.0)
    route(res, prioritised(1), pool)
    assert res.reserved.keys() == {"e0"}
    assert res.filter(prioritised(-1), list(pool)) == []  # the profile then fails the request


@pytest.mark.parametrize(
    ("selector", "protected", "other"),
    [
        ({"fairnessIds": ["tenant-a"]}, {"fairness_id": "tenant-a"}, {"fairness_id": "tenant-b"}),
        (
            {"headerName": "X-Tier", "headerValues": ["gold"]},
            {"headers": {"x-tier": " gold "}},
            {"headers": {"x-tier": "silver"}},
        ),
    ],
)
def test_the_class_by_fairness_id_or_header(
    selector: dict[str, Any], protected: dict[str, Any], other: dict[str, Any]
) -> None:
    params = {k: v for k, v in PARAMS.items() if k != "minPriority"} | selector
    res = reservation(FakeClock(0.0), minPriority=None, **params)

    def made(fields: dict[str, Any]) -> InferenceRequest:
        req = prioritised(5, headers=fields.get("headers"))
        req.fairness_id = fields.get("fairness_id", "default-flow")
        return req

    assert res.protects(made(protected)) and not res.protects(made(other))


def test_unrouted_completions_and_removed_endpoints_leave_no_state() -> None:
    clock, pool = FakeClock(0.0), endpoints(4)
    res = reservation(clock)
    other = prioritised(0)
    result = route(res, other, pool)
    res.response_complete(other, result, None)  # not protected: nothing was counted
    assert res.in_flight == 0
    req = prioritised(1)
    result = route(res, req, pool)
    name = result.targets[0].name
    assert res.protected_on == {name: 1} and res.reserved.keys() == {name}
    res.endpoint_removed(result.targets[0])
    assert not res.reserved and res.protected_on == {}
    finish(res, req, result)
    assert res.in_flight == 0 and res.protected_on == {}


def test_the_peak_keeps_the_value_in_force_at_the_window_start() -> None:
    peak = DemandPeak(10.0)
    peak.record(0.0, 7)
    peak.record(1.0, 2)
    assert peak.peak(10.5) == 7  # in force from 0 to 1, inside the window [0.5, 10.5]
    assert peak.peak(11.0) == 2  # ended as the window [1, 11] starts
    peak.record(20.0, 3)
    assert peak.peak(25.0) == 3 and len(peak.changes) == 1


CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: demand-sized-reservation
  parameters: {parameters}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: demand-sized-reservation, weight: 10}}
  - {{pluginRef: queue-scorer, weight: 1}}
"""


def test_in_a_profile_the_flood_is_kept_off_and_the_class_placed_on_its_pods() -> None:
    clock = FakeClock(0.0)
    config = load_config(CONFIG.format(parameters="{fairnessIds: [tenant-a], requestsPerPod: 2}"))
    components = build_components(config, PluginContext(clock=clock))
    pool = endpoints(4)
    pool[2].inflight_requests = 0
    for e in (pool[0], pool[1], pool[3]):
        e.inflight_requests = 3
    tenant_a = prioritised(0)
    tenant_a.fairness_id = "tenant-a"
    result = components.scheduler.schedule(tenant_a, pool)
    assert result.targets[0].name == "e2"  # reserved: the pod with the fewest other requests
    components.hooks.pre_request(tenant_a, result)
    flood = prioritised(0)
    flood.fairness_id = "tenant-b"
    for _ in range(5):
        assert components.scheduler.schedule(flood, pool).targets[0].name != "e2"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{}", "exactly one of minPriority, fairnessIds or headerName (given: none)"),
        (
            "{minPriority: 1, fairnessIds: [a]}",
            "exactly one of minPriority, fairnessIds or headerName (given: minPriority, fairnessIds)",
        ),
        ("{headerName: x-tier}", "headerValues: needs at least one value when headerName is set"),
        ("{minPriority: 1, headerValues: [a]}", "headerValues: only with headerName"),
        ("{minPriority: 1, requestsPerPod: 0}", "requestsPerPod: Input should be greater than 0"),
        ("{minPriority: 1, headroom: -0.1}", "headroom: Input should be greater than or equal to 0"),
        ("{minPriority: 1, window: 0s}", "window: Input should be greater than 0"),
        ("{minPriority: 1, idleRelease: soon}", "idleRelease"),
        (
            "{minPriority: 1, maxPodsFraction: 1.5}",
            "maxPodsFraction: Input should be less than or equal to 1",
        ),
        ("{minPriority: high}", "minPriority: Input should be a valid integer"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(parameters: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIG.format(parameters=parameters))
    assert message in str(caught.value)
    assert "plugins[0].parameters" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "selector"),
    [
        ("demand-reserved-critical.yaml", {"min_priority": 1}),
        ("demand-reserved-tenant.yaml", {"fairness_ids": ["tenant-a"]}),
    ],
)
def test_the_bench_configs_load_with_the_plugin_as_filter_and_scorer(
    name: str, selector: dict[str, Any]
) -> None:
    config = load_config((BENCH_CONFIGS / name).read_text())
    (profile,) = config.profiles
    assert profile.filters == ("demand-sized-reservation",)
    assert profile.scorers[0] == ("demand-sized-reservation", 10.0)
    assert sum(weight for _, weight in profile.scorers[1:]) < 10.0
    params = config.plugins["demand-sized-reservation"].params
    assert {key: getattr(params, key) for key in selector} == selector


def test_the_peak_keeps_no_history_a_higher_later_value_covers() -> None:
    """Every protected request's routing reads the peak: a window holding thousands of changes
    (requests starting and ending) must not be scanned whole each time."""
    peak = DemandPeak(10.0)
    for step in range(10_000):
        peak.record(step * 1e-4, 5 + step % 2)  # in flight going 5, 6, 5, 6, ... within the window
    assert peak.peak(1.0) == 6
    assert len(peak.changes) <= 2
    for step in range(5):
        peak.record(2.0 + step, 4 - step)  # falling: each value stays until the window passes it
    assert [peak.peak(t) for t in (11.9, 12.5, 13.5, 14.5, 15.5, 16.5)] == [6, 4, 3, 2, 1, 0]


@pytest.mark.parametrize(("pods", "fraction"), [(1, 0.75), (2, 0.4), (3, 0.25)])
def test_a_cap_below_one_pod_reserves_none(pods: int, fraction: float) -> None:
    """maxPodsFraction below 1 keeps the rest of the pool open to the others: a pool too small for
    even one reserved pod under the cap (one pod at 0.75) must not be handed whole to the class,
    or every other request would be refused while it is active."""
    clock, pool = FakeClock(0.0), endpoints(pods)
    res = reservation(clock, maxPodsFraction=fraction)
    route(res, prioritised(1), pool)
    assert not res.reserved
    assert res.filter(prioritised(-1), list(pool)) == pool


def test_a_pool_shrunk_under_the_cap_gives_pods_back_without_waiting_for_idle() -> None:
    clock, pool = FakeClock(0.0), endpoints(4)
    res = reservation(clock, maxPodsFraction=0.5)
    flights = [(req, route(res, req, pool)) for req in (prioritised(1) for _ in range(8))]
    assert len(res.reserved) == 2
    clock.now = 10.0  # the pool down to one pod (a rollout) while the class is still active
    res.filter(prioritised(1), pool[:1])
    assert len(res.reserved) == 1 and res.released == 0  # shrinks as capped, not released as idle
    for req, result in flights:
        finish(res, req, result)


@pytest.mark.parametrize("overrides", [{"requestsPerPod": 1e-320}, {"headroom": 1e308}])
def test_extreme_sizing_parameters_reserve_the_cap_instead_of_failing(overrides: dict[str, float]) -> None:
    """A demand that overflows to infinity (a tiny requestsPerPod, a huge headroom) asks for the
    cap: ceil(inf) raising OverflowError would fail every request the filter sees."""
    clock, pool = FakeClock(0.0), endpoints(4)
    res = reservation(clock, **overrides)
    for _ in range(2):
        route(res, prioritised(1), pool)
    assert len(res.reserved) == 3
    assert len(res.filter(prioritised(-1), list(pool))) == 1
