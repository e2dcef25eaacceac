"""The decision record of one request, and the bounded, sampled ring buffer that keeps them."""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import xxhash

log = logging.getLogger(__name__)

PROMPT_LIMIT = 4096  # characters of the prompt kept when prompts are recorded
# Characters kept of what clients name (model, target model, request id, objective) and of an
# error's message: the ring holds its records for long, and a model name can be as long as a body.
TEXT_LIMIT = 256
MESSAGE_LIMIT = 1024


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text`, or its first `limit` characters and "..." (ASCII: the string stays one byte a character)."""
    return text if len(text) <= limit else text[:limit] + "..."


def bounded_id(text: str) -> str:
    """A client's id (a request or session id) as long-lived state keeps it: one over TEXT_LIMIT
    characters becomes its start and its digest, within TEXT_LIMIT (so the form a record shows
    finds it again) and unique to it (a plain prefix would mix up ids that share one)."""
    if len(text) <= TEXT_LIMIT:
        return text
    digest = "...xxh3:" + xxhash.xxh3_128_hexdigest(text.encode(errors="surrogatepass"))
    return text[: TEXT_LIMIT - len(digest)] + digest


class EndpointLike(Protocol):
    """What a record needs of an endpoint (the datastore's `Endpoint`)."""

    @property
    def name(self) -> str: ...

    @property
    def hostport(self) -> str: ...

    @property
    def ref(self) -> tuple[str, str]:
        """(name, hostport), the same tuple every time."""
        ...


class PluginLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def type_name(self) -> str: ...


def _clamp(score: float) -> float:
    # As the profile does: NaN and negatives count 0, above 1 counts 1.
    return 0.0 if not score >= 0.0 else 1.0 if score > 1.0 else score


class FrozenProfile(NamedTuple):
    """A profile's record as names and numbers only: tuples of strings and floats, which the
    garbage collector stops tracking, so a full ring adds little to every collection (a record kept
    as references to the scheduler's lists made the EPP's full collections markedly more frequent)."""

    name: str
    candidates: tuple[str, ...]
    filters: tuple[tuple[str, str, tuple[str, ...], float], ...]  # plugin, type, kept, seconds
    scorers: tuple[tuple[str, str, float, tuple[float, ...], float], ...]  # + weight, raw scores
    scored: tuple[tuple[str, str], ...]  # (name, host:port) of the endpoints that reached scoring
    totals: tuple[float, ...]
    picker: tuple[str, str, float] | None
    picked: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        filters = []
        previous = self.candidates
        for plugin, kind, kept, seconds in self.filters:
            kept_names = set(kept)
            removed = [name for name in previous if name not in kept_names]
            filters.append(
                {"plugin": plugin, "type": kind, "kept": len(kept), "removed": removed, "seconds": seconds}
            )
            previous = kept
        endpoints: list[dict[str, Any]] = []
        for i, (name, address) in enumerate(self.scored):
            scores = {plugin: float(values[i]) for plugin, _, _, values, _ in self.scorers}
            total = (
                self.totals[i]
                if i < len(self.totals)
                else sum(weight * _clamp(values[i]) for _, _, weight, values, _ in self.scorers)
            )
            endpoints.append({"endpoint": name, "address": address, "scores": scores, "total": total})
        endpoints.sort(key=lambda item: -item["total"])
        return {
            "name": self.name,
            "candidates": len(self.candidates),
            "filters": filters,
            "scorers": [
                {"plugin": plugin, "type": kind, "weight": weight, "seconds": seconds}
                for plugin, kind, weight, _, seconds in self.scorers
            ],
            "endpoints": endpoints,
            "picker": (
                {"plugin": self.picker[0], "type": self.picker[1], "seconds": self.picker[2]}
                if self.picker
                else None
            ),
            "picked": list(self.picked),
            "failed": not self.picked,
            "seconds": self.seconds,
        }


class ProfileRecord:
    """What one scheduling profile did, while it runs: references to the profile's own lists
    (nothing is copied on the hot path); `freeze` turns them into names and numbers."""

    __slots__ = (
        "candidates",
        "filters",
        "name",
        "picked",
        "picker",
        "scored",
        "scorers",
        "seconds",
        "totals",
    )

    def __init__(self, name: str, candidates: Sequence[EndpointLike]) -> None:
        self.name = name
        self.candidates = candidates
        # (plugin, endpoints kept, seconds)
        self.filters: list[tuple[PluginLike, Sequence[EndpointLike], float]] = []
        # (plugin, weight, raw scores in `scored` order, seconds)
        self.scorers: list[tuple[PluginLike, float, Sequence[float], float]] = []
        self.scored: Sequence[EndpointLike] = ()
        self.totals: Sequence[float] = ()
        self.picker: tuple[PluginLike, float] | None = None
        self.picked: Sequence[EndpointLike] = ()
        self.seconds = 0.0

    def filtered(self, plugin: PluginLike, kept: Sequence[EndpointLike], seconds: float) -> None:
        self.filters.append((plugin, kept, seconds))

    def scored_by(
        self,
        plugin: PluginLike,
        weight: float,
        endpoints: Sequence[EndpointLike],
        scores: Sequence[float],
        seconds: float,
    ) -> None:
        self.scored = endpoints
        self.scorers.append((plugin, weight, scores, seconds))

    def picked_by(
        self,
        plugin: PluginLike,
        endpoints: Sequence[EndpointLike],
        totals: Sequence[float],
        picked: Sequence[EndpointLike],
        seconds: float,
    ) -> None:
        self.scored = endpoints
        self.totals = totals
        self.picker = (plugin, seconds)
        self.picked = picked

    def freeze(self) -> FrozenProfile:
        picker = self.picker
        return FrozenProfile(
            self.name,
            tuple([e.name for e in self.candidates]),
            tuple([(p.name, p.type_name, tuple([e.name for e in kept]), t) for p, kept, t in self.filters]),
            tuple([(p.name, p.type_name, w, tuple(scores), t) for p, w, scores, t in self.scorers]),
            tuple([e.ref for e in self.scored]),
            tuple(self.totals),
            (picker[0].name, picker[0].type_name, picker[1]) if picker else None,
            tuple([e.name for e in self.picked]),
            self.seconds,
        )


def _ref(endpoint: EndpointLike | None) -> tuple[str, str] | None:
    return None if endpoint is None else endpoint.ref


def _ref_json(ref: tuple[str, str] | None) -> dict[str, str] | None:
    return None if ref is None else {"endpoint": ref[0], "address": ref[1]}


class DecisionRecord:
    """One scheduled request. The director fills the request fields, admission and outcome; the
    scheduler adds one `ProfileRecord` per profile it runs; the response fields come at the end.
    `freeze` (at commit) keeps names and numbers only, dropping every reference to endpoints and
    to the scheduler's lists."""

    __slots__ = (
        "admission",
        "api",
        "candidates",
        "destination",
        "error",
        "explain",
        "fallbacks",
        "frozen",
        "model",
        "objective",
        "pd",
        "prefill",
        "priority",
        "profiles",
        "prompt",
        "request_id",
        "response_seconds",
        "response_status",
        "schedule_seconds",
        "seq",
        "target_model",
        "time",
    )

    def __init__(self, request_id: str, model: str, target_model: str, api: str) -> None:
        self.seq = 0
        self.time = time.time()
        self.request_id = bounded_id(request_id)
        self.model = clip(model)
        self.target_model = clip(target_model)
        self.api = api
        self.objective = ""
        self.priority = 0
        self.prompt: str | None = None
        self.explain = False  # the client asked for its explanation in a response header
        self.candidates: Sequence[EndpointLike] = ()
        self.admission = ""  # "admitted", or "rejected" with the error
        self.profiles: list[ProfileRecord] = []
        self.schedule_seconds = 0.0
        self.destination: EndpointLike | None = None
        self.fallbacks: Sequence[EndpointLike] = ()
        self.pd: str | None = None  # "prefill-decode" / "decode-only" in a P/D pool
        self.prefill: EndpointLike | None = None
        self.error: tuple[str, int, str] | None = None  # (code, HTTP status, message)
        self.response_status: int | None = None
        self.response_seconds: float | None = None
        self.frozen: FrozenDecision | None = None

    def profile(self, name: str, candidates: Sequence[EndpointLike]) -> ProfileRecord:
        record = ProfileRecord(name, candidates)
        self.profiles.append(record)
        return record

    def refused(self, code: str, status: int, message: str) -> None:
        self.error = (code, status, clip(message, MESSAGE_LIMIT))

    def freeze(self) -> FrozenDecision:
        if self.frozen is None:
            self.frozen = FrozenDecision(
                tuple([e.name for e in self.candidates]),
                tuple([p.freeze() for p in self.profiles]),
                _ref(self.destination),
                tuple([e.ref for e in self.fallbacks]),
                _ref(self.prefill),
            )
            self.candidates, self.profiles, self.fallbacks = (), [], ()
            self.destination = self.prefill = None
        return self.frozen

    def mentions(self, endpoint: str) -> bool:
        """Whether `endpoint` (a name or host:port) was chosen, as destination, fallback or prefill."""
        frozen = self.freeze()
        chosen = [frozen.destination, frozen.prefill, *frozen.fallbacks]
        return any(ref is not None and endpoint in ref for ref in chosen)

    @property
    def destination_name(self) -> str | None:
        destination = self.freeze().destination
        return destination[0] if destination else None

    def to_json(self) -> dict[str, Any]:
        frozen = self.freeze()
        data: dict[str, Any] = {
            "seq": self.seq,
            "request_id": self.request_id,
            "time": self.time,
            "model": self.model,
            "target_model": self.target_model,
            "api": self.api,
            "objective": self.objective,
            "priority": self.priority,
            "candidates": list(frozen.candidates),
            "admission": self.admission,
            "outcome": "refused" if self.error else "routed",
            "error": (
                {"code": self.error[0], "status": self.error[1], "message": self.error[2]}
                if self.error
                else None
            ),
            "destination": _ref_json(frozen.destination),
            "fallbacks": [_ref_json(ref) for ref in frozen.fallbacks],
            "pd": None if self.pd is None else {"decision": self.pd, "prefill": _ref_json(frozen.prefill)},
            "profiles": [p.to_json() for p in frozen.profiles],
            "schedule_seconds": self.schedule_seconds,
            "response": (
                None
                if self.response_status is None and self.response_seconds is None
                else {"status": self.response_status, "seconds": self.response_seconds}
            ),
        }
        if self.prompt is not None:
            data["prompt"] = self.prompt
        return data

    def summary(self, top: int = 8) -> dict[str, Any]:
        """A short form for the response header: choice, P/D, and per profile the `top`
        endpoints by total with their raw scores and, per filter, how many endpoints it removed
        with the first `top` named (every name made a header of tens of KB in a large pool)."""
        full = self.to_json()
        return {
            "request_id": self.request_id,
            "destination": full["destination"],
            "pd": full["pd"],
            "profiles": [
                {
                    "name": p["name"],
                    "picked": p["picked"],
                    "removed": {
                        f["plugin"]: {"count": len(f["removed"]), "endpoints": f["removed"][:top]}
                        for f in p["filters"]
                        if f["removed"]
                    },
                    "weights": {s["plugin"]: s["weight"] for s in p["scorers"]},
                    "endpoints": p["endpoints"][:top],
                }
                for p in full["profiles"]
            ],
        }


class FrozenDecision(NamedTuple):
    candidates: tuple[str, ...]
    profiles: tuple[FrozenProfile, ...]
    destination: tuple[str, str] | None
    fallbacks: tuple[tuple[str, str], ...]
    prefill: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class RecordOptions:
    capacity: int = 1000  # records kept; 0 turns recording off
    sample_rate: float = 1.0  # fraction of requests recorded
    record_prompts: bool = False  # keep the first PROMPT_LIMIT characters of each prompt
    explain_header: bool = False  # honour a request's explanation header (names pod addresses)


class DecisionRecorder:
    """A ring buffer of the last `capacity` records of sampled requests. Lives on the event loop
    (not thread-safe); `subscribe` tells a listener (the live view) that a record was added."""

    def __init__(self, options: RecordOptions, rng: random.Random | None = None) -> None:
        self.options = options
        self._records: deque[DecisionRecord] = deque(maxlen=max(options.capacity, 1))
        self._seq = itertools.count(1)
        self._rng = rng or random.Random()
        self._listeners: list[Callable[[], None]] = []
        self.last_seq = 0

    @property
    def enabled(self) -> bool:
        return self.options.capacity > 0

    def start(
        self, request_id: str, model: str, target_model: str, api: str, forced: bool
    ) -> DecisionRecord | None:
        """A record for this request if it is sampled (always when `forced`), else None."""
        options = self.options
        if not forced and (
            options.capacity <= 0 or (options.sample_rate < 1.0 and self._rng.random() >= options.sample_rate)
        ):
            return None
        return DecisionRecord(request_id, model, target_model, api)

    def commit(self, record: DecisionRecord) -> None:
        if self.options.capacity <= 0:
            return
        record.freeze()
        record.seq = self.last_seq = next(self._seq)
        self._records.append(record)
        for listener in self._listeners:
            # The request was decided already (and may hold load): an observer that fails is
            # its own problem, logged, and the request and the other listeners go on.
            try:
                listener()
            except Exception:
                log.exception("a decision-record listener failed; the request goes on")

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after every commit; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[DecisionRecord]:
        """Newest first."""
        return reversed(self._records)

    def since(self, seq: int) -> list[DecisionRecord]:
        """Records committed after `seq`, oldest first."""
        newer: list[DecisionRecord] = []
        for record in reversed(self._records):
            if record.seq <= seq:
                break
            newer.append(record)
        newer.reverse()
        return newer

    def recent(self, limit: int = 50, endpoint: str | None = None) -> list[DecisionRecord]:
        """Up to `limit` records, newest first; with `endpoint`, those that chose it."""
        found: list[DecisionRecord] = []
        for record in reversed(self._records):
            if len(found) >= limit:
                break
            if endpoint is None or record.mentions(endpoint):
                found.append(record)
        return found

    def by_request_id(self, request_id: str) -> list[DecisionRecord]:
        request_id = bounded_id(request_id)  # as records keep it
        return [r for r in reversed(self._records) if r.request_id == request_id]
