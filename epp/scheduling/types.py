"""What a scheduler returns, and the interface the request director drives it through."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from epp.datastore import Endpoint
from epp.datastore.endpoint import join_host_port
from epp.explain import DecisionRecord
from epp.requests import InferenceRequest

if TYPE_CHECKING:
    from epp.tracing.spans import RequestTrace

# GIE and llm-d treat the pick of a profile literally named "prefill" as computing the prompt's KV.
PREFILL_PROFILE = "prefill"


class SchedulingError(Exception):
    """No endpoint could be chosen (every candidate filtered out, or a profile failed)."""


@dataclass(slots=True)
class ProfileResult:
    targets: list[Endpoint]
    # Every scored candidate's weighted total by `host:port`, kept only when asked for
    # (llm-d's --emit-endpoint-scores) and only by a profile that has scorers.
    scores: dict[str, float] | None = None


@dataclass(slots=True)
class SchedulingResult:
    """Per-profile picks; the primary profile's targets are the destination, primary first.

    `headers` are added to the request forwarded upstream (e.g. `x-prefiller-host-port`);
    `response_headers` are added to the response the client receives (e.g. `x-session-token`).
    `destination_port`, when set, replaces the targets' own port in the destination (llm-d's
    data-parallel routing sends every rank's requests to the pod's primary port)."""

    profile_results: dict[str, ProfileResult | None]
    primary_profile: str
    headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    destination_port: int | None = None

    @property
    def destination(self) -> str:
        """The primary targets as `host:port,...`, GIE's destination header value."""
        if self.destination_port is None:
            return ",".join(e.hostport for e in self.targets)
        return ",".join(join_host_port(e.address, self.destination_port) for e in self.targets)

    @property
    def targets(self) -> list[Endpoint]:
        primary = self.profile_results.get(self.primary_profile)
        return primary.targets if primary else []

    def cache_holders(self) -> list[Endpoint]:
        """Endpoints that will compute the prompt's KV cache: the primary pick and the pick of the
        `prefill` profile, without repeats. Prefix-learning plugins record the prompt on these."""
        holders = self.targets[:1]
        prefill = self.profile_results.get(PREFILL_PROFILE)
        if prefill and prefill.targets and prefill.targets[0] not in holders:
            holders.append(prefill.targets[0])
        return holders

    def first_targets(self) -> list[Endpoint]:
        """The endpoint each profile actually sends work to (its first target), without repeats:
        these carry the request's load (a P/D request loads both its prefill and decode pods)."""
        seen: dict[str, Endpoint] = {}
        for profile in self.profile_results.values():
            if profile and profile.targets:
                seen.setdefault(profile.targets[0].name, profile.targets[0])
        return list(seen.values())


class Scheduler(Protocol):
    """Picks endpoints for a parsed request. Implementations see only parsed requests and
    endpoint state; learning from traffic is the request-control hooks' part."""

    def schedule(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        record: DecisionRecord | None = None,
        trace: RequestTrace | None = None,
    ) -> SchedulingResult: ...
