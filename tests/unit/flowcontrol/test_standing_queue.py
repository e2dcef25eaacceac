"""The standing-queue controller on an injected clock: it sheds only once every wait for a whole
interval exceeded the target, then each late request until one is on time; a burst that drains
within the interval, or waits under the target, are never shed; a constant clock skew is taken
out of the waits."""

from __future__ import annotations

import pytest

from epp.flowcontrol.standing_queue import FLOOR_EPOCH, FLOOR_EPOCHS, StandingQueue

TARGET = 0.005
INTERVAL = 0.125
STEP = 2**-10  # seconds between requests: binary fractions keep the clock's sums exact


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controller() -> tuple[StandingQueue, Clock]:
    clock = Clock()
    queue = StandingQueue(TARGET, INTERVAL, clock)
    queue.shed(0.0)  # a request that found no queue: the floor is 0
    return queue, clock


def feed(queue: StandingQueue, clock: Clock, waits: list[float], every: float = STEP) -> list[bool]:
    decisions = []
    for wait in waits:
        clock.now += every
        decisions.append(queue.shed(wait))
    return decisions


def test_waits_under_the_target_are_never_shed() -> None:
    queue, clock = controller()
    assert not any(feed(queue, clock, [0.001, 0.004, 0.005, 0.0049] * 500))
    assert not queue.shedding


def test_a_burst_that_drains_within_the_interval_is_served() -> None:
    queue, clock = controller()
    # Just under an interval of waits far above the target, then the queue is drained: nothing shed.
    assert not any(feed(queue, clock, [0.05] * 127))
    assert not any(feed(queue, clock, [0.001] + [0.05] * 127))


def test_a_standing_queue_is_shed_after_one_interval_until_a_wait_is_under_the_target() -> None:
    queue, clock = controller()
    decisions = feed(queue, clock, [0.02] * 300)
    # One interval from the first late wait (128 requests) is served, then every late one is refused.
    assert decisions[:128] == [False] * 128
    assert decisions[128:] == [True] * 172
    assert queue.shedding
    # The refusals drained the queue: the first wait under the target stops the shedding at once,
    # and a new standing queue needs a whole interval again.
    assert feed(queue, clock, [0.002, 0.02, 0.02]) == [False, False, False]
    assert not queue.shedding
    assert feed(queue, clock, [0.02] * 126) == [False] * 126  # 128 late waits since the one on time
    assert feed(queue, clock, [0.02]) == [True]


def test_while_shedding_a_request_under_the_target_is_served() -> None:
    queue, clock = controller()
    feed(queue, clock, [0.5] * 200)
    assert queue.shedding
    assert feed(queue, clock, [0.003, 0.5]) == [False, False]


def test_a_constant_clock_skew_is_taken_out_of_the_waits() -> None:
    clock = Clock()
    ahead = StandingQueue(TARGET, INTERVAL, clock)  # the EPP's clock 40 ms ahead of the gateway's
    assert not any(feed(ahead, clock, [0.040, 0.043, 0.041] * 200))
    assert ahead.floor() == pytest.approx(0.040)
    assert feed(ahead, clock, [0.060] * 200)[-1] is True  # 20 ms of real queue
    clock = Clock()
    behind = StandingQueue(TARGET, INTERVAL, clock)  # 300 ms behind: waits are negative
    assert not any(feed(behind, clock, [-0.300, -0.298] * 200))
    assert feed(behind, clock, [-0.280] * 200)[-1] is True


def test_the_floor_is_at_most_the_interval_and_forgets_old_epochs() -> None:
    clock = Clock()
    queue = StandingQueue(TARGET, INTERVAL, clock)
    # Started under overload: every wait seen is late; the floor is capped at the interval, so a
    # queue standing over interval + target is still shed.
    assert feed(queue, clock, [2.0] * 300)[-1] is True
    assert queue.floor() == INTERVAL
    queue.shed(0.0)
    assert queue.floor() == 0.0
    # A low wait is forgotten after FLOOR_EPOCHS epochs without one (a clock stepped since).
    for _ in range(FLOOR_EPOCHS + 1):
        clock.now += FLOOR_EPOCH
        queue.shed(0.03)
    assert queue.floor() == pytest.approx(0.03)


@pytest.mark.parametrize("target", [0.0, INTERVAL, 0.2, -0.001])
def test_the_target_must_be_positive_and_below_the_interval(target: float) -> None:
    with pytest.raises(ValueError, match=r"the target \(.*s\) must be positive and below the interval"):
        StandingQueue(target, INTERVAL)
