"""Restart backoff of `epp run`'s supervisor."""

from __future__ import annotations

from epp.stack.processes import RestartBackoff


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    now = [0.0]
    backoff = RestartBackoff(initial=0.5, maximum=4.0, reset_after=60.0, clock=lambda: now[0])
    delays = []
    for _ in range(6):
        delays.append(backoff.next_delay())
        backoff.started()
        now[0] += 1.0  # dies again a second after each restart
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.restarts == 6
    now[0] += 60.0  # the last restart stayed up a minute
    assert backoff.next_delay() == 0.5
