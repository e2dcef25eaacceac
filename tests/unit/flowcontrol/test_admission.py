"""Legacy admission (gie-epp.md 5.1): shed sheddable requests only while the pool is saturated."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from epp.datastore import Endpoint
from epp.flowcontrol import SaturationDetector
from epp.flowcontrol.admission import LegacyAdmission
from epp.framework import Plugin
from epp.plugins.utilization_detector import UtilizationDetector
from epp.requests import ErrorCode, RequestError
from tests.unit.plugin_helpers import FakeClock, context, endpoint, plugin, request


class FixedSaturation(Plugin, SaturationDetector):
    type_name = "fixed"

    def __init__(self, value: float) -> None:
        super().__init__("fixed", None, context())
        self.value = value
        self.calls = 0

    def saturation(self, candidates: Sequence[Endpoint]) -> float:
        self.calls += 1
        return self.value


def prioritised(priority: int) -> object:
    req = request()
    req.priority = priority
    return req


@pytest.mark.parametrize("saturation", [1.0, 3.0])
def test_sheddable_requests_get_429_when_saturated(saturation: float) -> None:
    admission = LegacyAdmission(FixedSaturation(saturation))
    with pytest.raises(RequestError) as refused:
        admission.admit(prioritised(-1), [endpoint()])  # type: ignore[arg-type]
    assert refused.value.code is ErrorCode.RESOURCE_EXHAUSTED and refused.value.status == 429
    assert refused.value.message == "system saturated, sheddable request dropped"


def test_sheddable_requests_pass_below_saturation() -> None:
    LegacyAdmission(FixedSaturation(0.99)).admit(prioritised(-5), [endpoint()])  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [0, 10])
def test_non_sheddable_requests_always_pass_without_computing_saturation(priority: int) -> None:
    detector = FixedSaturation(5.0)
    LegacyAdmission(detector).admit(prioritised(priority), [endpoint()])  # type: ignore[arg-type]
    assert detector.calls == 0


def test_with_the_default_detector_stale_metrics_mean_saturated() -> None:
    clock = FakeClock(1000.0)
    admission = LegacyAdmission(plugin(UtilizationDetector, ctx=context(clock=clock)))
    healthy = endpoint("a", queue=1, scraped_at=999.95)
    admission.admit(prioritised(-1), [healthy])  # type: ignore[arg-type]
    clock.now += 1
    with pytest.raises(RequestError):
        admission.admit(prioritised(-1), [healthy])  # type: ignore[arg-type]
