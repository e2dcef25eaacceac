"""`priority-holdback-policy`: llm-d's fixed per-band ceilings, by rank or by priority value."""

from __future__ import annotations

import asyncio

import pytest

from epp.config.loader import load_config
from epp.params.strict import ConfigError
from epp.plugins.priority_holdback_policy import PriorityHoldbackPolicy
from tests.unit.flowcontrol.flow_helpers import Queue, built, queued_request
from tests.unit.plugin_helpers import FakeClock, plugin

# llm-d's README example.
CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: priority-holdback-policy
  name: my-holdback-policy
  parameters: {parameters}
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}]
flowControl:
  usageLimitPolicyPluginRef: my-holdback-policy
"""
README = "{shape: linear, domain: rank, minCeiling: 0.4, maxCeiling: 0.9}"


def test_rank_spaces_the_ceilings_evenly() -> None:
    policy = plugin(PriorityHoldbackPolicy, {"minCeiling": 0.4, "maxCeiling": 0.9})
    assert policy.ceilings(0.5, [100, 50, 0, -1, -100, -1000]) == pytest.approx(
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    )
    assert policy.ceilings(0.5, [7]) == [0.9]
    assert policy.ceilings(0.5, []) == []


def test_value_places_the_ceilings_by_priority() -> None:
    policy = plugin(PriorityHoldbackPolicy, {"domain": "value", "minCeiling": 0.2})
    assert policy.ceilings(0.5, [100, 75, -100]) == pytest.approx([1.0, 0.9, 0.2])
    assert policy.ceilings(0.5, [3, 3]) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{}", "minCeiling: Field required"),
        ("{minCeiling: 1.0}", "minCeiling: Input should be less than 1"),
        (
            "{minCeiling: 0.5, maxCeiling: 0.5}",
            "minCeiling (0.5) must be strictly less than maxCeiling (0.5)",
        ),
        ("{minCeiling: 0.1, domain: ordinal}", "domain: Input should be 'rank' or 'value'"),
        ("{minCeiling: 0.1, shape: sigmoid}", "shape: Input should be 'linear'"),
    ],
)
def test_bad_parameters_are_refused(parameters: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIG.format(parameters=parameters))
    assert message in str(caught.value)


async def test_the_low_band_waits_while_saturation_is_over_its_ceiling() -> None:
    """README example, two bands: ceilings 0.9 and 0.4. At saturation 0.5 only the high band goes."""
    fc, _, detector = built(CONFIG.format(parameters=README), FakeClock(0.0))
    queue = Queue(fc)
    await queue.add(queued_request("low", "t", priority=-1))
    await queue.add(queued_request("high", "t", priority=5))
    detector.value = 0.5
    await asyncio.wait_for(queue.tasks[1], 5)
    assert queue.order == ["high"] and fc.length == 1  # low still waits
    assert await queue.drain(detector, 0.39) == ["high", "low"]
