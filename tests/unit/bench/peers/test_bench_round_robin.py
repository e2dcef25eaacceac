"""round-robin-picker: Envoy's equal-weight ROUND_ROBIN, the virtual-time "no EPP" baseline."""

from __future__ import annotations

import random

from epp.bench.peers.round_robin_picker import RoundRobinPicker
from epp.datastore import Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.pickers import PickerParams

REQUEST = InferenceRequest("r", ApiKind.COMPLETIONS, "/v1/completions", "m")


def picker(seed: int, count: int = 1) -> RoundRobinPicker:
    params = PickerParams.model_validate({"maxNumOfEndpoints": count})
    return RoundRobinPicker("rr", params, PluginContext(EppMetrics(), random.Random(seed)))


def test_cycles_through_every_candidate_in_turn_ignoring_scores() -> None:
    candidates = [Endpoint(EndpointSpec(f"e{i}", f"10.0.0.{i}", 8000)) for i in range(3)]
    rr = picker(seed=4)
    picks = [rr.pick(REQUEST, candidates, [0.0, 1.0, 0.5])[0].name for _ in range(6)]
    assert picks[:3] == picks[3:] and sorted(picks[:3]) == ["e0", "e1", "e2"]
    assert picks[1] == f"e{(int(picks[0][1]) + 1) % 3}"
    starts = {picker(seed).pick(REQUEST, candidates, [0.0] * 3)[0].name for seed in range(20)}
    assert len(starts) == 3, "starts at a random position, as Envoy does"
    several = [e.name for e in picker(0, count=5).pick(REQUEST, candidates, [0.0] * 3)]
    assert sorted(several) == ["e0", "e1", "e2"], "at most every candidate once"
