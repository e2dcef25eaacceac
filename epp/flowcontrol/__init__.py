"""Admission and saturation: whether a request may be scheduled now."""

from epp.flowcontrol.admission import Admission, AdmitAll, LegacyAdmission
from epp.flowcontrol.saturation import SaturationDetector

__all__ = ["Admission", "AdmitAll", "LegacyAdmission", "SaturationDetector"]
