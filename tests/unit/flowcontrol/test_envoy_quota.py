"""The rate the EPP assigns the gateway, on an injected clock and the overload guard's counts: none
while nothing is refused; the admitted rate measured as the guard starts refusing; cut again at
most once per hold while it keeps refusing; raised additively while nothing is refused; lifted
once the EPP receives clearly less than the limit."""

from __future__ import annotations

import pytest

from epp.flowcontrol.envoy_quota import MIN_RATE, EnvoyQuota, QuotaTuning

TICK = 0.125  # binary fractions keep the clock's sums exact


class Guard:
    """The overload guard's running counts, and the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.admitted = 0
        self.refused = 0

    def run(
        self, quota: EnvoyQuota, seconds: float, admitted: float, refused: float = 0.0
    ) -> list[float | None]:
        """`seconds` of ticks, each admitting and refusing at these rates (per second)."""
        rates = []
        for _ in range(round(seconds / TICK)):
            self.now += TICK
            self.admitted += round(admitted * TICK)
            self.refused += round(refused * TICK)
            rates.append(quota.tick())
        return rates


def quota() -> tuple[EnvoyQuota, Guard]:
    guard = Guard()
    return EnvoyQuota(lambda: guard.admitted, lambda: guard.refused, QuotaTuning(), lambda: guard.now), guard


def test_no_limit_while_the_guard_refuses_nothing_at_any_rate() -> None:
    limit, guard = quota()
    assert guard.run(limit, 2.0, admitted=10) == [None] * 16
    assert guard.run(limit, 2.0, admitted=5000) == [None] * 16


def test_the_limit_is_the_rate_admitted_while_the_queue_stood() -> None:
    limit, guard = quota()
    guard.run(limit, 1.0, admitted=800)
    rates = guard.run(limit, TICK, admitted=800, refused=800)
    assert rates == [pytest.approx(800)]
    assert limit.measured() == pytest.approx(800)


def test_while_refusing_it_is_cut_to_the_measured_rate_at_most_once_per_hold() -> None:
    limit, guard = quota()
    guard.run(limit, 1.0, admitted=800)
    guard.run(limit, TICK, admitted=800, refused=800)  # set at 800
    held = guard.run(limit, 0.75, admitted=400, refused=400)  # within the hold (1 s): kept
    assert held == [pytest.approx(800)] * 6
    cut = guard.run(limit, 0.25, admitted=400, refused=400)[-1]  # the hold over: the measured 400
    assert cut == pytest.approx(400)
    assert guard.run(limit, 0.5, admitted=200, refused=200)[-1] == pytest.approx(400)  # held again


def test_it_rises_additively_while_nothing_is_refused_and_binds() -> None:
    limit, guard = quota()
    guard.run(limit, 1.0, admitted=800)
    guard.run(limit, TICK, admitted=800, refused=800)
    rates = guard.run(limit, 2.0, admitted=800)  # the bucket binds: the EPP gets about its rate
    # 10 % of the rate first set per second
    assert rates[-1] == pytest.approx(800 + 0.1 * 800 * 2.0)
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))


def test_it_is_lifted_once_the_demand_falls_clearly_below_it() -> None:
    limit, guard = quota()
    guard.run(limit, 1.0, admitted=800)
    guard.run(limit, TICK, admitted=800, refused=800)
    rates = guard.run(limit, 2.0, admitted=100)  # the flood is over
    below = next(i for i, r in enumerate(rates) if r is None)
    # the window (0.5 s) sees the drop, then lift_after (1 s) without a refusal
    assert 1.0 <= below * TICK <= 1.75
    assert rates[below:] == [None] * (len(rates) - below)
    assert guard.run(limit, 1.0, admitted=2000) == [None] * 8  # gone until the next refusal


def test_a_refusal_while_lifting_keeps_the_limit() -> None:
    limit, guard = quota()
    guard.run(limit, 1.0, admitted=800)
    guard.run(limit, TICK, admitted=800, refused=800)
    guard.run(limit, 0.75, admitted=100)
    guard.run(limit, TICK, admitted=100, refused=8)
    assert guard.run(limit, 0.75, admitted=100)[-1] is not None  # the quiet second starts again


def test_an_epp_that_admitted_nothing_still_lets_a_request_a_second_through() -> None:
    limit, guard = quota()
    assert guard.run(limit, TICK, admitted=0, refused=800) == [MIN_RATE]
