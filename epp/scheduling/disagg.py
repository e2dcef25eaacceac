"""Prefill/decode disaggregation shared by the profile handler and its deciders: the decider
extension point and the decision types.

A decider is its own plugin (llm-d's design) so the policy "is a remote prefill worth it for this
request on this decode endpoint?" can change without touching the handler's profile sequencing."""

from __future__ import annotations

from abc import abstractmethod

from epp.datastore import Endpoint
from epp.framework import Extension
from epp.requests import InferenceRequest

# Request attribute the P/D handler sets to the endpoint already chosen for the other leg (the decode
# pick before the prefill profile runs, or the prefill pick before decode when prefill-first), so
# topology-aware plugins can keep the two legs close (llm-d's `peer-endpoint`).
PEER_ENDPOINT = "peer-endpoint"

DECODE_ONLY = "decode-only"
PREFILL_DECODE = "prefill-decode"
ENCODE_DECODE = "encode-decode"
ENCODE_PREFILL_DECODE = "encode-prefill-decode"


def decision_type(encoded: bool, prefilled: bool) -> str:
    """llm-d's decision label for the stages a request used."""
    if encoded:
        return ENCODE_PREFILL_DECODE if prefilled else ENCODE_DECODE
    return PREFILL_DECODE if prefilled else DECODE_ONLY


class PrefillDecider(Extension):
    """Says whether a request should be prefilled (or, as an encode decider, have its media
    encoded) on other endpoints before `decode` decodes it. The same deciders serve both stages,
    as in llm-d."""

    @abstractmethod
    def disaggregate(self, request: InferenceRequest, decode: Endpoint | None) -> bool:
        """True to run the stage's profile; `decode` is the decode profile's chosen endpoint, None
        when it is not chosen yet (the encode stage of a prefill-first handler)."""
