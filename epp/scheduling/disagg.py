"""Prefill/decode disaggregation shared by the profile handler and its deciders: the decider
extension point and the decision types.

A decider is its own plugin (llm-d's design) so the policy "is a remote prefill worth it for this
request on this decode endpoint?" can change without touching the handler's profile sequencing."""

from __future__ import annotations

from abc import abstractmethod

from epp.datastore import Endpoint
from epp.framework import Extension
from epp.requests import InferenceRequest

DECODE_ONLY = "decode-only"
PREFILL_DECODE = "prefill-decode"


class PrefillDecider(Extension):
    """Says whether a request should be prefilled on a prefill endpoint before `decode` decodes it."""

    @abstractmethod
    def disaggregate(self, request: InferenceRequest, decode: Endpoint) -> bool:
        """True to run the prefill profile; `decode` is the decode profile's chosen endpoint."""
