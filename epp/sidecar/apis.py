"""The inference APIs the sidecar disaggregates, and where each keeps its output-token limits
(the prefill leg must produce exactly one token, whatever the client asked for)."""

from __future__ import annotations

from types import MappingProxyType

# A limit field is a path of keys into the request JSON.
FieldPath = tuple[str, ...]

_CHAT_STYLE: tuple[FieldPath, ...] = (("max_tokens",), ("max_completion_tokens",), ("min_tokens",))
RESPONSES_PATH = "/v1/responses"

TOKEN_LIMITS: MappingProxyType[str, tuple[FieldPath, ...]] = MappingProxyType(
    {
        "/v1/chat/completions": _CHAT_STYLE,
        "/v1/completions": _CHAT_STYLE,
        "/v1/messages": _CHAT_STYLE,
        RESPONSES_PATH: (("max_output_tokens",),),
        "/inference/v1/generate": (("sampling_params", "max_tokens"), ("sampling_params", "min_tokens")),
    }
)


def is_disaggregated_route(method: str, path: str) -> bool:
    return method == "POST" and path in TOKEN_LIMITS
