"""Admission and saturation: whether a request may be scheduled now, and GIE's flow-control layer
(queues per flow, dispatched while the pool has room)."""

from epp.flowcontrol.admission import Admission, AdmitAll, LegacyAdmission
from epp.flowcontrol.eviction import EvictionFilterPolicy, EvictionOrderingPolicy
from epp.flowcontrol.queues import FairnessPolicy, OrderingPolicy, UsageLimitPolicy
from epp.flowcontrol.saturation import SaturationDetector

__all__ = [
    "Admission",
    "AdmitAll",
    "EvictionFilterPolicy",
    "EvictionOrderingPolicy",
    "FairnessPolicy",
    "LegacyAdmission",
    "OrderingPolicy",
    "SaturationDetector",
    "UsageLimitPolicy",
]
