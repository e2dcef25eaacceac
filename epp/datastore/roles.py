"""llm-d's `llm-d.ai/role` label values, and which of them serve each stage of a request: the
role filters (`epp.scheduling.roles`) route by them, and flow control reads the pool's saturation
per stage from them (`epp.flowcontrol.saturation.split_stages`)."""

from __future__ import annotations

ROLE_LABEL = "llm-d.ai/role"

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

# The stages of a request an endpoint serves, as bits (flow control reads saturation per stage):
# no role, or an empty one, decodes; encoders and unknown roles serve neither.
PREFILL_STAGE, DECODE_STAGE = 1, 2


def stages_of(role: str | None) -> int:
    if not role:
        return DECODE_STAGE
    return (PREFILL_STAGE if role in PREFILL_ROLES else 0) | (DECODE_STAGE if role in DECODE_ROLES else 0)
