"""The rate the EPP assigns the gateway, on an injected clock, CPU time and the overload guard's
counts: none while nothing (or next to nothing) is refused; once the guard refuses a significant
share, the EPP's capacity measured then (what it handled per CPU-second); measured again at most
once per hold while it keeps refusing, never upwards; raised in steps while nothing is refused and
it receives most of the limit; lifted once the EPP receives clearly less than the part of the
limit the gateways it still holds back have."""

from __future__ import annotations

import itertools

import pytest

from epp.flowcontrol.envoy_quota import MAX_RATE, MIN_RATE, EnvoyQuota, QuotaTuning

TICK = 0.125  # binary fractions keep the clock's sums exact
TUNING = QuotaTuning()


class Guard:
    """The overload guard's running counts, the clock and the process's CPU time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.cpu = 0.0
        self.admitted = 0
        self.refused = 0

    def run(
        self,
        quota: EnvoyQuota,
        seconds: float,
        admitted: float,
        refused: float = 0.0,
        busy: float = 1.0,
        binding: float = 1.0,
    ) -> list[float | None]:
        """`seconds` of ticks, each admitting and refusing at these rates (per second), with
        `busy` of a core used and `binding` of the limit held by gateways it holds back."""
        rates = []
        for _ in range(round(seconds / TICK)):
            self.now += TICK
            self.cpu += busy * TICK
            self.admitted += round(admitted * TICK)
            self.refused += round(refused * TICK)
            rates.append(quota.tick(binding))
        return rates


def quota() -> tuple[EnvoyQuota, Guard]:
    guard = Guard()
    limit = EnvoyQuota(
        lambda: guard.admitted, lambda: guard.refused, TUNING, lambda: guard.now, lambda: guard.cpu
    )
    return limit, guard


def overloaded(guard: Guard, limit: EnvoyQuota, admitted: float = 800, refused: float = 800) -> float | None:
    """A second at full load, then a tick refusing: the limit set from that window."""
    guard.run(limit, 1.0, admitted=admitted)
    return guard.run(limit, TICK, admitted=admitted, refused=refused * 8)[-1]


def test_no_limit_while_the_guard_refuses_nothing_at_any_rate() -> None:
    limit, guard = quota()
    assert guard.run(limit, 2.0, admitted=10) == [None] * 16
    assert guard.run(limit, 2.0, admitted=5000) == [None] * 16


def test_a_few_refusals_are_noise_not_a_limit() -> None:
    limit, guard = quota()
    guard.run(limit, 1.0, admitted=800)
    assert guard.run(limit, 1.0, admitted=800, refused=80) == [None] * 8  # 9 %: under the 20 %


def test_saturated_the_limit_is_what_it_admitted_and_its_refusals_would_serve() -> None:
    limit, guard = quota()
    rate = overloaded(guard, limit)
    admitted, refused = limit.measured()
    assert limit.busy() == 1.0
    assert rate == pytest.approx(admitted + TUNING.refusal_cost * refused)
    assert rate > admitted


def test_refusing_while_half_idle_the_limit_is_its_capacity_on_a_whole_core() -> None:
    limit, guard = quota()
    guard.run(limit, 1.0, admitted=400, busy=0.5)
    rate = guard.run(limit, TICK, admitted=400, refused=3200, busy=0.5)[-1]
    admitted, refused = limit.measured()
    assert rate == pytest.approx((admitted + TUNING.refusal_cost * refused) / 0.5)


def test_while_refusing_it_is_measured_again_at_most_once_per_hold_and_never_raised() -> None:
    limit, guard = quota()
    first = overloaded(guard, limit)
    assert first is not None
    held = guard.run(limit, 0.75, admitted=300, refused=300)  # within the hold (1 s): kept
    assert held == [first] * 6
    cut = guard.run(limit, 0.25, admitted=300, refused=300)[-1]
    assert cut is not None and cut < first
    assert cut == pytest.approx(limit.capacity())
    guard.run(limit, 1.0, admitted=200, refused=2000, busy=0.1)  # a capacity estimate above the limit
    assert guard.run(limit, TICK, admitted=200, refused=2000, busy=0.1)[-1] == cut


def test_a_stall_of_the_process_is_not_measured_as_capacity() -> None:
    # SIGSTOPped for 3 s under a flood (or a cgroup's CPU throttling): no tick, no count and no CPU
    # for that time. Measured over a window that spans the stall, the EPP's CPU share fell under
    # MIN_BUSY and the limit was cut from 1,002 to 100 requests/s through Envoy, then rose 30 % a
    # second: 541 of 12,000 requests served in the next 8 s instead of about 4,700.
    limit, guard = quota()
    before = overloaded(guard, limit)
    assert before is not None
    guard.now += 3.0  # stopped: the clock moves, nothing else
    after = guard.run(limit, 1.0, admitted=800, refused=800)  # back, the backlog refused as before
    assert min(rate or 0.0 for rate in after) >= 0.9 * before, (before, after)


def test_a_loop_too_busy_to_tick_for_a_window_is_still_measured() -> None:
    limit, guard = quota()
    guard.run(limit, 1.0, admitted=800)
    guard.now, guard.cpu = guard.now + 1.5, guard.cpu + 1.5  # one late tick, the process busy throughout
    guard.admitted, guard.refused = guard.admitted + 1200, guard.refused + 1200
    assert limit.tick() == pytest.approx(800 + TUNING.refusal_cost * 800)


def test_it_rises_in_steps_a_second_apart_while_nothing_is_refused_and_binds() -> None:
    """Steps, not a rise every tick: Envoy refills a token bucket whose figures change."""
    limit, guard = quota()
    first = overloaded(guard, limit)
    assert first is not None
    rates: list[float | None] = [first]
    for _ in range(round(4.0 / TICK)):  # the bucket binds: the EPP gets about its rate
        rate = rates[-1]
        assert rate is not None
        rates.extend(guard.run(limit, TICK, admitted=rate))
    steps = [i for i in range(1, len(rates)) if rates[i] != rates[i - 1]]
    assert len(steps) >= 3
    assert all((b - a) * TICK >= TUNING.rise_every for a, b in itertools.pairwise(steps))
    assert all(rates[i] == pytest.approx(rates[i - 1] * (1 + TUNING.increase)) for i in steps)


def test_it_is_lifted_once_the_demand_falls_clearly_below_it() -> None:
    limit, guard = quota()
    overloaded(guard, limit)
    rates = guard.run(limit, 3.0, admitted=100)  # the flood is over
    below = next(i for i, r in enumerate(rates) if r is None)
    # the window (1 s) loses the refusals, then lift_after (1 s) under lift_below of the limit
    assert 1.0 <= below * TICK <= 2.5
    assert rates[below:] == [None] * (len(rates) - below)
    assert guard.run(limit, 1.0, admitted=2000) == [None] * 8  # gone until the next overload


def test_it_is_lifted_by_the_demand_of_the_gateways_it_still_holds_back() -> None:
    """A gateway that no longer gets denials does not fill its share: the EPP's admissions are
    compared with the shares of the others (`binding`), and with none held back the limit goes."""
    limit, guard = quota()
    rate = overloaded(guard, limit)
    assert rate is not None
    held = guard.run(limit, 3.0, admitted=0.7 * rate, binding=0.8)  # 0.7 >= 0.8 * 0.8: still binds
    assert None not in held
    assert guard.run(limit, 3.0, admitted=0.7 * rate, binding=0.0)[-1] is None


def test_it_never_rises_past_what_the_epp_receives() -> None:
    """A small gateway held back while the EPP receives half the limit: no lift (the gateway
    still binds), and no rise either, so the limit cannot grow without bound."""
    limit, guard = quota()
    rate = overloaded(guard, limit)
    assert rate is not None
    assert guard.run(limit, 30.0, admitted=rate / 2, binding=0.05) == [rate] * round(30.0 / TICK)


def test_a_refusal_while_lifting_keeps_the_limit() -> None:
    limit, guard = quota()
    overloaded(guard, limit)
    guard.run(limit, 1.5, admitted=100)
    guard.run(limit, TICK, admitted=100, refused=8)
    assert guard.run(limit, 0.75, admitted=100)[-1] is not None  # the quiet second starts again


def test_the_limit_stays_within_what_envoy_can_hold() -> None:
    """Envoy's token bucket counts in uint32: a measured capacity past it is clamped."""
    limit, guard = quota()
    assert overloaded(guard, limit, admitted=2**40, refused=2**40) == MAX_RATE


def test_an_epp_that_admitted_nothing_still_lets_requests_through() -> None:
    limit, guard = quota()
    rate = guard.run(limit, 1.0, admitted=0, refused=16)[-1]  # busy refusing, serving none
    assert rate == pytest.approx(max(MIN_RATE, TUNING.refusal_cost * limit.measured()[1]))
    assert rate is not None and rate >= MIN_RATE
