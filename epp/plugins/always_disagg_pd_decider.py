"""`always-disagg-pd-decider`: every request is prefilled remotely (when a prefill endpoint is found).
For pools where decode pods must never prefill, and for testing the P/D path."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.disagg import PrefillDecider


@register
class AlwaysDisaggPDDecider(Plugin, PrefillDecider):
    type_name = "always-disagg-pd-decider"

    def disaggregate(self, request: InferenceRequest, decode: Endpoint | None) -> bool:
        return True
