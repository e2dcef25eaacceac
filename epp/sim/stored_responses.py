"""The Responses API's stored responses (`store`, true unless the request says false): the
conversation up to each response, so a follow-up naming it as `previous_response_id` continues
it, and the response itself, which `GET /v1/responses/{id}` returns and a background one's
`POST /v1/responses/{id}/cancel` cancels. Kept in this server's memory only, as vLLM keeps them:
another replica does not know the id and answers 404, which is why a gateway must route a
follow-up, a retrieval and a cancel where the response was made."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from epp.sim.openai_api import ApiError, Turn

STORE_CAPACITY = 100_000
"""Responses kept per server; the oldest go first (vLLM never drops one: a leak it warns of)."""

CANCELLABLE = ("queued", "in_progress")
"""The statuses of a background response still running: vLLM cancels only those."""


@dataclass(slots=True)
class StoredResponse:
    turns: list[Turn]  # the conversation a follow-up continues
    body: dict[str, Any]  # the response as GET returns it


class ResponseStore:
    def __init__(self, capacity: int = STORE_CAPACITY) -> None:
        self.capacity = capacity
        # Oldest first; an OrderedDict drops its first cheaply (a dict scans the slots dropped before).
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._responses)

    def _stored(self, response_id: str) -> StoredResponse:
        """The stored response, or vLLM's answer for an id it does not hold."""
        stored = self._responses.get(response_id)
        if stored is None:
            raise ApiError(
                404,
                f"Response with id '{response_id}' not found.",
                "response_id",
                kind="invalid_request_error",
            )
        return stored

    def history(self, response_id: str) -> list[Turn]:
        return self._stored(response_id).turns

    def retrieve(self, response_id: str) -> dict[str, Any]:
        return self._stored(response_id).body

    def cancel(self, response_id: str) -> dict[str, Any]:
        """Mark a running background response cancelled (vLLM's 400 for any other)."""
        body = self._stored(response_id).body
        if body["status"] not in CANCELLABLE:
            raise ApiError(400, "Cannot cancel a synchronous response.", kind="invalid_request_error")
        body["status"] = "cancelled"
        return body

    def keep(self, response_id: str, turns: list[Turn], body: dict[str, Any]) -> None:
        """Store a response; a background one already cancelled keeps its cancelled answer."""
        kept = self._responses.get(response_id)
        if kept is not None and kept.body["status"] == "cancelled":
            return
        self._responses[response_id] = StoredResponse(turns, body)
        self._responses.move_to_end(response_id)
        while len(self._responses) > self.capacity:
            self._responses.popitem(last=False)
