"""`sheddable-eviction-filter`: only requests of negative priority may be evicted in flight."""

from __future__ import annotations

import pytest

from epp.plugins.sheddable_eviction_filter import SheddableEvictionFilter
from tests.unit.flowcontrol.flow_helpers import in_flight
from tests.unit.plugin_helpers import plugin


@pytest.mark.parametrize(("priority", "accepted"), [(-100, True), (-1, True), (0, False), (5, False)])
async def test_only_sheddable_requests_are_evictable(priority: int, accepted: bool) -> None:
    assert plugin(SheddableEvictionFilter).accept(in_flight("r", priority)) is accepted
