"""`soft-reflective-ceiling-policy`: llm-d's graduated per-band ceilings, alone and through the
flow controller of llm-d's own sample config (deploy/config/soft-reflective-ceiling-epp-config.yaml,
loaded unchanged)."""

from __future__ import annotations

import pytest

from epp.config.loader import load_config
from epp.metrics.exporter import EppMetrics
from epp.params.strict import ConfigError
from epp.plugins.soft_reflective_ceiling_policy import SoftReflectiveCeilingPolicy
from tests.unit.flowcontrol.flow_helpers import UPSTREAM_CONFIGS, Queue, built, queued_request
from tests.unit.plugin_helpers import FakeClock, plugin

UPSTREAM = UPSTREAM_CONFIGS / "llmd-router-ebab687__deploy__config__soft-reflective-ceiling-epp-config.yaml"


def policy() -> SoftReflectiveCeilingPolicy:
    return plugin(SoftReflectiveCeilingPolicy)


@pytest.mark.parametrize("saturation", [0.0, 0.5, 0.99, 1.0])
def test_one_band_is_never_gated(saturation: float) -> None:
    assert policy().ceilings(saturation, [100]) == [1.0]
    assert policy().ceilings(saturation, []) == []


@pytest.mark.parametrize("saturation", [0.0, 0.3, 0.7, 0.99, 1.0, 1.5])
def test_the_highest_band_is_always_open(saturation: float) -> None:
    assert policy().ceilings(saturation, [100, 0, -50])[0] == 1.0


def test_bands_below_their_reflective_ceiling_are_open_and_all_shut_when_full() -> None:
    assert policy().ceilings(0.3, [100, 0, -50]) == [1.0, 1.0, 1.0]
    assert policy().ceilings(1.0, [100, 0, -50]) == [1.0, 0.0, 0.0]
    # 4 bands at 0.7: reflective ceilings 1, 0.767, 0.533, 0.3; the two lowest alternate (shut first).
    assert policy().ceilings(0.7, [100, 50, 0, -50]) == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("saturation", "pattern"),
    [
        (0.7, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),  # period round(0.7 / 0.3) = 2
        (0.75, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]),  # period 3
        (0.5, [1.0] * 6),  # period 1: at its ceiling, open every cycle
    ],
)
def test_a_gated_band_opens_one_cycle_in_a_period(saturation: float, pattern: list[float]) -> None:
    p = policy()
    assert [p.ceilings(saturation, [100, -50])[1] for _ in pattern] == pattern


def test_gated_bands_open_on_the_same_cycles() -> None:
    p = policy()
    for _ in range(3):
        p.ceilings(0.6, [100, 0, -50])
    results = [p.ceilings(0.7, [100, 0, -50]) for _ in range(100)]
    assert all(c[1] == c[2] for c in results)
    assert sum(c[2] for c in results) == 50


def test_asking_outside_a_cycle_does_not_advance_the_duty_cycle() -> None:
    p = policy()
    assert p.lowest_ceiling(0.75, [100, -50]) == 0.0
    assert p.lowest_ceiling(0.3, [100, -50]) == 1.0
    assert p.tick == 0


def test_parameters_are_refused() -> None:
    config = UPSTREAM.read_text().replace(
        "- type: soft-reflective-ceiling-policy",
        "- type: soft-reflective-ceiling-policy\n  parameters: {threshold: 0.5}",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config, strict=True)
    assert "threshold" in str(caught.value)


async def test_upstream_config_gates_the_low_band_to_one_dispatch_in_three() -> None:
    """At saturation 0.75 the high band dispatches every cycle; the low band (reflective ceiling
    0.25) one cycle in three: 3 requests take exactly 9 cycles."""
    metrics = EppMetrics()
    fc, _, detector = built(UPSTREAM, FakeClock(0.0), metrics)
    queue = Queue(fc)
    for i in range(3):
        await queue.add(queued_request(f"high{i}", "t", priority=10))
        await queue.add(queued_request(f"low{i}", "t", priority=0))
    order = await queue.drain(detector, 0.5)  # period 1: everything goes, high band first
    assert order == ["high0", "high1", "high2", "low0", "low1", "low2"]

    detector.value = 1.0
    for i in range(3):
        await queue.add(queued_request(f"later{i}", "t", priority=0))
    cycles = "inference_extension_flow_control_dispatch_cycle_duration_seconds_count"
    before = metrics.registry.get_sample_value(cycles)
    await queue.drain(detector, 0.75)
    assert metrics.registry.get_sample_value(cycles) - before == 9
