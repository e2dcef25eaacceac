"""llm-d's session affinity, shared by `session-affinity-scorer` (a soft preference) and
`session-affinity-filter` (a hard one): which endpoint a request's session is pinned to, and how a
routing decision pins it.

`encoded_endpoint_header`: the client echoes a token the EPP returned in a response header
(base64 of the endpoint's `namespace/name`); stateless.
`session_id`: the client sends an opaque session id (a header, or an attribute a producer
published); the EPP remembers session -> endpoint until `evictionTtlSeconds` pass without a
request of that session, at most `maxEntries` sessions (ours; llm-d's table has no cap). As
llm-d's: a binding moves to another endpoint only when its endpoint was not among this plugin's
candidates for the request; otherwise it stays put."""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, Literal, TypeVar

from pydantic import Field, model_validator

from epp.datastore import Endpoint
from epp.explain import bounded_id
from epp.framework import PluginParams
from epp.requests import InferenceRequest
from epp.scheduling.types import SchedulingResult

K = TypeVar("K", bound=Hashable)


class EncodedEndpointHeaderConfig(PluginParams):
    header: str = Field(default="x-session-token", min_length=1)


class SessionSource(PluginParams):
    header: str | None = None
    attribute: str | None = None
    producer: str | None = None  # the attribute's producer, when it is not the default one

    @model_validator(mode="after")
    def _exactly_one(self) -> SessionSource:
        if (self.header is None) == (self.attribute is None):
            raise ValueError("a session source names exactly one of header or attribute")
        return self


class SessionIdConfig(PluginParams):
    sources: list[SessionSource] = Field(
        default_factory=lambda: [SessionSource.model_validate({"header": "x-session-id"})], min_length=1
    )
    eviction_ttl_seconds: float = Field(default=300, gt=0)
    eviction_sweep_seconds: float = Field(default=10, gt=0)
    # Ours (llm-d bounds its table by the TTL alone): sessions kept at most; past it the least
    # recently pinned lose their pin first, so unique session ids cannot grow it without bound.
    max_entries: int = Field(default=100_000, ge=1)


class SessionAffinityParams(PluginParams):
    strategy: Literal["encoded_endpoint_header", "session_id"] = "encoded_endpoint_header"
    profile_name: str = ""  # whose pick pins the session (default: the primary profile's)
    encoded_endpoint_header_config: EncodedEndpointHeaderConfig = EncodedEndpointHeaderConfig()
    session_id_config: SessionIdConfig = SessionIdConfig()


def endpoint_id(endpoint: Endpoint) -> str:
    return f"{endpoint.spec.namespace}/{endpoint.name}"


def endpoint_token(endpoint: Endpoint) -> str:
    return base64.b64encode(endpoint_id(endpoint).encode()).decode()


def _decode_token(token: str) -> str | None:
    try:
        return base64.b64decode(token, validate=True).decode()
    except ValueError:  # not base64 (binascii.Error), not UTF-8, or not even ASCII (b64decode's own)
        return None


class PinTable(Generic[K]):
    """Keys (client ids kept through `bounded_id`, or their digests) pinned to endpoints, each pin
    expiring `ttl` seconds after it was last set; expired pins are dropped every `sweep_every`
    seconds, and past `capacity` pins the least recently set go first.

    Pins are kept in the order they were set, so the expired ones are the oldest: a sweep and a
    full table's drop take them from the front, at the cost of what is dropped (an OrderedDict: a
    plain dict finds its first key past every slot dropped before it)."""

    def __init__(
        self, ttl: float, sweep_every: float, clock: Callable[[], float], capacity: int | None = None
    ) -> None:
        self.ttl = ttl
        self.sweep_every = sweep_every
        self.capacity = capacity
        self.entries: OrderedDict[K, tuple[str, float]] = OrderedDict()  # key -> (endpoint, expiry)
        self._clock = clock
        self._next_sweep = clock() + sweep_every

    def get(self, key: K) -> str | None:
        """The endpoint `key` is pinned to, unless the pin expired."""
        entry = self.entries.get(key)
        return entry[0] if entry is not None and entry[1] >= self._clock() else None

    def set(self, key: K, endpoint: str) -> None:
        now = self._clock()
        entries = self.entries
        entries[key] = (endpoint, now + self.ttl)
        entries.move_to_end(key)
        if self.capacity is not None:
            while len(entries) > self.capacity:
                entries.popitem(last=False)
        if now >= self._next_sweep:
            while entries:
                oldest, (_, expiry) = next(iter(entries.items()))
                if expiry >= now:
                    break
                del entries[oldest]
            self._next_sweep = now + self.sweep_every


class SessionPins:
    """One plugin instance's pins: each instance keeps its own session table, as in llm-d."""

    def __init__(self, params: SessionAffinityParams, clock: Callable[[], float]) -> None:
        self.by_session_id = params.strategy == "session_id"
        self.profile_name = params.profile_name
        self.token_header = params.encoded_endpoint_header_config.header.strip().lower()
        config = params.session_id_config
        self.sources = [
            (s.header.strip().lower() if s.header else None, s.producer or s.attribute or "")
            for s in config.sources
        ]
        self.ttl = config.eviction_ttl_seconds
        # session id -> endpoint id
        self.sessions: PinTable[str] = PinTable(
            self.ttl, config.eviction_sweep_seconds, clock, config.max_entries
        )
        # Requests whose session's endpoint was missing from the candidates, when seen: only
        # those may move their session to the endpoint they end up on.
        self._unavailable: dict[str, float] = {}
        self._clock = clock
        self._next_sweep = clock() + config.eviction_sweep_seconds

    def session_id(self, request: InferenceRequest) -> str | None:
        for header, attribute in self.sources:
            value = request.headers.get(header) if header else request.attributes.get(attribute)
            if isinstance(value, str) and value.strip():
                return bounded_id(value.strip())
        return None

    def choose(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> Endpoint | None:
        """The candidate the request's session is pinned to, if it is one of them."""
        if not self.by_session_id:
            token = request.headers.get(self.token_header)
            pinned = _decode_token(token) if token else None
            return next((e for e in candidates if endpoint_id(e) == pinned), None) if pinned else None
        session = self.session_id(request)
        bound = self.sessions.get(session) if session is not None else None
        if bound is None:
            return None
        target = next((e for e in candidates if endpoint_id(e) == bound), None)
        if target is None:
            self._unavailable[bounded_id(request.request_id)] = self._clock()
        return target

    def record(self, request: InferenceRequest, result: SchedulingResult) -> None:
        """Pin the session to the endpoint the decision chose (token: tell the client which)."""
        target = self._served_by(result)
        if target is None:
            return
        if not self.by_session_id:
            result.response_headers[self.token_header] = endpoint_token(target)
            return
        unavailable = self._unavailable.pop(bounded_id(request.request_id), None) is not None
        session = self.session_id(request)
        if session is None:
            return
        bound = self.sessions.get(session)
        if bound is None or bound == endpoint_id(target) or unavailable:
            self.sessions.set(session, endpoint_id(target))
        now = self._clock()
        if now >= self._next_sweep:
            self._unavailable = {k: t for k, t in self._unavailable.items() if t + self.ttl >= now}
            self._next_sweep = now + self.sessions.sweep_every

    def _served_by(self, result: SchedulingResult) -> Endpoint | None:
        if not self.profile_name:
            return result.targets[0] if result.targets else None
        profile = result.profile_results.get(self.profile_name)
        return profile.targets[0] if profile and profile.targets else None
