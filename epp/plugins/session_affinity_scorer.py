"""`session-affinity-scorer` (llm-d): send a session back to the endpoint that served it.

`encoded_endpoint_header`: the client echoes a token the EPP returned in a response header
(base64 of `namespace/name` of the endpoint); that endpoint scores 1, others 0.
`session_id`: the client sends an opaque session id; the EPP remembers session -> endpoint for
`evictionTtlSeconds` after the session's last request."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.types import SchedulingResult


class EncodedEndpointHeaderConfig(PluginParams):
    header: str = Field(default="x-session-token", min_length=1)


class SessionSource(PluginParams):
    header: str | None = None
    attribute: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SessionSource:
        if (self.header is None) == (self.attribute is None):
            raise ValueError("a session source names exactly one of header or attribute")
        return self


class SessionIdConfig(PluginParams):
    sources: list[SessionSource] = Field(
        default_factory=lambda: [SessionSource.model_validate({"header": "x-session-id"})], min_length=1
    )
    eviction_ttl_seconds: int = Field(default=300, gt=0)
    eviction_sweep_seconds: int = Field(default=10, gt=0)


class SessionAffinityParams(PluginParams):
    strategy: Literal["encoded_endpoint_header", "session_id"] = "encoded_endpoint_header"
    profile_name: str = ""
    encoded_endpoint_header_config: EncodedEndpointHeaderConfig = EncodedEndpointHeaderConfig()
    session_id_config: SessionIdConfig = SessionIdConfig()


def endpoint_token(endpoint: Endpoint) -> str:
    return base64.b64encode(f"{endpoint.spec.namespace}/{endpoint.name}".encode()).decode()


def _decode_token(token: str) -> str | None:
    try:
        return base64.b64decode(token, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


@register
class SessionAffinityScorer(Plugin, Scorer, PreRequest):
    type_name = "session-affinity-scorer"
    Params = SessionAffinityParams

    def __init__(self, name: str, params: SessionAffinityParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.by_session_id = params.strategy == "session_id"
        self.profile_name = params.profile_name
        self.token_header = params.encoded_endpoint_header_config.header.lower()
        config = params.session_id_config
        self.sources = [(s.header.lower() if s.header else None, s.attribute) for s in config.sources]
        self.ttl = float(config.eviction_ttl_seconds)
        self.sweep_every = float(config.eviction_sweep_seconds)
        self.sessions: dict[str, tuple[str, float]] = {}  # session id -> (endpoint name, expiry)
        self._clock = context.clock
        self._next_sweep = self._clock() + self.sweep_every

    def session_id(self, request: InferenceRequest) -> str | None:
        for header, attribute in self.sources:
            value = request.headers.get(header) if header else request.attributes.get(attribute or "")
            if isinstance(value, str) and value:
                return value
        return None

    def pinned_endpoint(self, request: InferenceRequest) -> str | None:
        """`namespace/name` (token strategy) or name (session strategy) of the session's endpoint."""
        if not self.by_session_id:
            token = request.headers.get(self.token_header)
            return _decode_token(token) if token else None
        session = self.session_id(request)
        bound = self.sessions.get(session) if session is not None else None
        if bound is None or bound[1] < self._clock():
            return None
        return bound[0]

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        pinned = self.pinned_endpoint(request)
        if pinned is None:
            return [0.0] * len(candidates)
        if self.by_session_id:
            return [1.0 if e.name == pinned else 0.0 for e in candidates]
        return [1.0 if f"{e.spec.namespace}/{e.name}" == pinned else 0.0 for e in candidates]

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        target = self._served_by(result)
        if target is None:
            return
        if not self.by_session_id:
            result.response_headers[self.token_header] = endpoint_token(target)
            return
        session = self.session_id(request)
        if session is None:
            return
        now = self._clock()
        self.sessions[session] = (target.name, now + self.ttl)
        if now >= self._next_sweep:
            self.sessions = {k: v for k, v in self.sessions.items() if v[1] >= now}
            self._next_sweep = now + self.sweep_every

    def _served_by(self, result: SchedulingResult) -> Endpoint | None:
        if not self.profile_name:
            return result.targets[0] if result.targets else None
        profile = result.profile_results.get(self.profile_name)
        return profile.targets[0] if profile and profile.targets else None
