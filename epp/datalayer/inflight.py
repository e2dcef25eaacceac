"""`InFlightLoad`: requests and tokens each endpoint is serving for this EPP right now.

The request director already keeps exact per-endpoint counters (incremented when a request is
routed, released exactly once when its response ends), so this view reads those and only adds what
the director does not count: an optional estimate of the output tokens still to be generated."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import DataKey

INFLIGHT_LOAD = DataKey("InFlightLoad", default_producer="inflight-load-producer")


class InFlightLoad:
    def __init__(self) -> None:
        self.estimated_output_tokens: dict[str, int] = {}

    def requests(self, endpoint: Endpoint) -> int:
        return endpoint.inflight_requests

    def tokens(self, endpoint: Endpoint) -> int:
        return endpoint.inflight_tokens + self.estimated_output_tokens.get(endpoint.name, 0)
