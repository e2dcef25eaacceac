"""`round-robin-fairness-policy`: the flows of a band (one per fairness id) take turns, one request
each, so a tenant with a thousand queued requests waits behind one request of every other tenant,
not behind all of them. (GIE rotates over the flows sorted by fairness id; here they rotate in the
order they got their first queued request. Both give every waiting flow one turn per round.)"""

from __future__ import annotations

from epp.flowcontrol.queues import Band, FairnessPolicy, Flow
from epp.framework import Plugin, register


@register
class RoundRobinFairnessPolicy(Plugin, FairnessPolicy):
    type_name = "round-robin-fairness-policy"

    def pick(self, band: Band) -> Flow | None:
        return band.next_in_rotation()
