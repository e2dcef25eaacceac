"""llm-d's `llm-d.ai/role` label values and which of them each role filter keeps."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import Plugin
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter

ENCODE = "encode"
PREFILL = "prefill"
DECODE = "decode"
ENCODE_PREFILL = "encode-prefill"
PREFILL_DECODE = "prefill-decode"
ENCODE_PREFILL_DECODE = "encode-prefill-decode"
BOTH = "both"  # deprecated spelling of prefill-decode

DECODE_ROLES = frozenset({DECODE, PREFILL_DECODE, BOTH, ENCODE_PREFILL_DECODE})
PREFILL_ROLES = frozenset({PREFILL, ENCODE_PREFILL, PREFILL_DECODE, BOTH, ENCODE_PREFILL_DECODE})
ENCODE_ROLES = frozenset({ENCODE, ENCODE_PREFILL, ENCODE_PREFILL_DECODE})


class RoleFilter(Plugin, Filter):
    """Keeps endpoints whose role label is in `roles`; unlabelled ones only if `keeps_unlabelled`."""

    roles: frozenset[str]
    keeps_unlabelled: bool = False

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        roles, unlabelled = self.roles, self.keeps_unlabelled
        kept = []
        for endpoint in candidates:
            role = endpoint.role
            if (role in roles) if role is not None else unlabelled:
                kept.append(endpoint)
        return kept
