"""`InFlightLoad`: the requests and tokens an `inflight-load-producer` counts on each endpoint
(llm-d's InFlightLoad attribute), and the per-request view its consumers read.

The counters are the producer's own, not the director's `Endpoint.inflight_*` (GIE's view: the
whole prompt, held until the response ends): llm-d counts only the prompt tokens the endpoint must
compute and frees them at the first streamed chunk, so the two differ by design."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from epp.datastore import Endpoint
from epp.framework import DataKey

INFLIGHT_LOAD = DataKey("InFlightLoad", default_producer="inflight-load-producer")


@dataclass(slots=True)
class LoadCell:
    """One endpoint's counters. A request keeps the cell it charged, so its release lands there
    even when the endpoint left the pool and a new one took its name (the old cell is orphaned)."""

    requests: int = 0
    tokens: int = 0

    def release(self, requests: int, tokens: int) -> None:
        """Subtract, never below zero (llm-d's clamped decrement)."""
        self.requests = max(0, self.requests - requests)
        self.tokens = max(0, self.tokens - tokens)


class InFlightLoad:
    """A producer's live counters by endpoint name, plus what the other EPP replicas' producers of
    the same name count (`peer`, replaced at each exchange; consumers read the sum, as llm-d's
    cross-replica aggregate)."""

    def __init__(self) -> None:
        self._cells: dict[str, LoadCell] = {}
        self.peer: Mapping[str, tuple[int, int]] = {}

    def cell(self, endpoint: Endpoint) -> LoadCell:
        cell = self._cells.get(endpoint.name)
        if cell is None:
            cell = self._cells[endpoint.name] = LoadCell()
        return cell

    def drop(self, endpoint: Endpoint) -> None:
        self._cells.pop(endpoint.name, None)

    def requests(self, endpoint: Endpoint) -> int:
        cell = self._cells.get(endpoint.name)
        own = cell.requests if cell is not None else 0
        return own + self.peer[endpoint.name][0] if endpoint.name in self.peer else own

    def tokens(self, endpoint: Endpoint) -> int:
        cell = self._cells.get(endpoint.name)
        own = cell.tokens if cell is not None else 0
        return own + self.peer[endpoint.name][1] if endpoint.name in self.peer else own

    def own(self) -> dict[str, tuple[int, int]]:
        """This replica's counts by endpoint name, endpoints with none left out."""
        return {name: (c.requests, c.tokens) for name, c in self._cells.items() if c.requests or c.tokens}


def _nothing(endpoint: Endpoint) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class RequestLoad:
    """What a consumer reads for one request: the live counters, plus the tokens this request
    would add to a candidate (llm-d's UncachedRequestTokens, which token-load-scorer adds),
    computed when asked: most readers never ask."""

    load: InFlightLoad
    cost: Callable[[Endpoint], int] = _nothing

    def requests(self, endpoint: Endpoint) -> int:
        return self.load.requests(endpoint)

    def tokens(self, endpoint: Endpoint) -> int:
        return self.load.tokens(endpoint)

    def request_tokens(self, endpoint: Endpoint) -> int:
        return self.cost(endpoint)
