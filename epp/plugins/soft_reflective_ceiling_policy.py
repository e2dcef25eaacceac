"""`soft-reflective-ceiling-policy` (llm-d's usage-limit policy): lower priority bands are held
back earlier as the pool fills, and gradually rather than at one threshold. No parameters.

With N bands ranked highest first, band i's reflective ceiling is 1 - i x saturation / (N - 1).
The highest band always gets 1.0; a band below its reflective ceiling gets 1.0 (open); at
saturation 1.0 or more every lower band gets 0.0; otherwise a band at or past its reflective
ceiling is open (1.0) on one dispatch cycle in round(saturation / (1 - saturation)) and shut
(0.0) on the others, so its dispatch rate falls continuously as saturation rises. One tick
counter, advanced once per cycle in which any band alternates, is shared by all bands, so on a
given cycle every alternating band is open or every one is shut (the dispatch loop stops at the
first shut band, so a lower band's open cycles must not fall on a higher band's shut ones)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from epp.flowcontrol.queues import UsageLimitPolicy
from epp.framework import Plugin, PluginContext, register

OPEN = 1.0
SHUT = 0.0
_ROUND_OFF_GUARD = 1e-9  # saturation within a hair of 1.0 still gives a finite period


@register
class SoftReflectiveCeilingPolicy(Plugin, UsageLimitPolicy):
    type_name = "soft-reflective-ceiling-policy"

    def __init__(self, name: str, params: object, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.tick = 0

    def ceilings(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        open_now = False
        if len(priorities) > 1 and _alternating(saturation):
            period = max(1, math.floor(saturation / (1.0 - saturation + _ROUND_OFF_GUARD) + 0.5))
            self.tick += 1
            open_now = self.tick % period == 0
        return _ceilings(saturation, len(priorities), open_now)

    def lowest_ceiling(self, saturation: float, priorities: Sequence[int]) -> float:
        """Asked outside a cycle: an alternating band counts as shut (it is, most cycles)."""
        return min(_ceilings(saturation, len(priorities), open_now=False))


def _alternating(saturation: float) -> bool:
    """Whether some band is at or past its reflective ceiling but the pool is not full: ceilings
    fall with rank, so exactly when the lowest band's (1 - saturation) is reached."""
    return 1.0 - saturation <= saturation < 1.0


def _ceilings(saturation: float, bands: int, open_now: bool) -> list[float]:
    ceilings = [OPEN] * min(bands, 1)
    for rank in range(1, bands):
        if saturation < 1.0 - rank * saturation / (bands - 1):
            ceilings.append(OPEN)
        elif saturation >= 1.0:
            ceilings.append(SHUT)
        else:
            ceilings.append(OPEN if open_now else SHUT)
    return ceilings
