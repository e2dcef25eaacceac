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
