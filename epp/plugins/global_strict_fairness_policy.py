"""`global-strict-fairness-policy` (GIE's default): no fairness between the flows of a band; the
band's best head request across all its flows (by the band's ordering policy) goes next, so with
`fcfs-ordering-policy` the band is one first-come, first-served queue."""

from __future__ import annotations

from epp.flowcontrol.queues import Band, FairnessPolicy, Flow
from epp.framework import Plugin, register


@register
class GlobalStrictFairnessPolicy(Plugin, FairnessPolicy):
    type_name = "global-strict-fairness-policy"

    def pick(self, band: Band) -> Flow | None:
        best: Flow | None = None
        best_key = None
        for flow in band.flows.values():
            key = flow.head_key()
            if key is not None and (best_key is None or key < best_key):
                best, best_key = flow, key
        return best
