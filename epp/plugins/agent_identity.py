"""`agent-identity` (llm-d): one identity per coding-agent session, from the session headers agents
send, so every turn of a session lands in the same fairness flow.

As llm-d's: the first non-empty header of `additionalSessionHeaders` (lower-cased, in order), then
`x-claude-code-session-id` (Claude Code), `x-session-affinity` (OpenCode), `session-id` and
`session_id` (Codex) becomes the request attribute `agent-identity`; the director uses it as the
request's fairness id when `x-gateway-inference-fairness-id` is absent (default `default-flow`).
This EPP has no flow control, so the fairness id only matters to plugins that read it."""

from __future__ import annotations

from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requestcontrol import AGENT_IDENTITY, RequestHeaderProcessor
from epp.requests import InferenceRequest

DEFAULT_SESSION_HEADERS = ("x-claude-code-session-id", "x-session-affinity", "session-id", "session_id")


class AgentIdentityParams(PluginParams):
    additional_session_headers: list[str] = []


@register
class AgentIdentity(Plugin, RequestHeaderProcessor):
    type_name = "agent-identity"
    Params = AgentIdentityParams

    def __init__(self, name: str, params: AgentIdentityParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        extra = [h.lower() for h in params.additional_session_headers]
        self.headers = (*extra, *DEFAULT_SESSION_HEADERS)

    def request_headers(self, request: InferenceRequest) -> None:
        for header in self.headers:
            value = request.headers.get(header)
            if value:
                request.attributes[AGENT_IDENTITY] = value
                return
