"""The Responses API's stored responses (`store`, true unless the request says false): the
conversation up to each response, so a follow-up naming it as `previous_response_id` continues
it. Kept in this server's memory only, as vLLM keeps them: another replica does not know the id
and answers 404, which is why a gateway must route a follow-up where its response was made."""

from __future__ import annotations

from collections import OrderedDict

from epp.sim.openai_api import ApiError, Turn

STORE_CAPACITY = 100_000
"""Responses kept per server; the oldest go first (vLLM never drops one: a leak it warns of)."""


class ResponseStore:
    def __init__(self, capacity: int = STORE_CAPACITY) -> None:
        self.capacity = capacity
        # Oldest first; an OrderedDict drops its first cheaply (a dict scans the slots dropped before).
        self._conversations: OrderedDict[str, list[Turn]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._conversations)

    def history(self, response_id: str) -> list[Turn]:
        """The stored conversation, or vLLM's answer for an id it does not hold."""
        turns = self._conversations.get(response_id)
        if turns is None:
            raise ApiError(
                404,
                f"Response with id '{response_id}' not found.",
                "response_id",
                kind="invalid_request_error",
            )
        return turns

    def keep(self, response_id: str, turns: list[Turn]) -> None:
        self._conversations[response_id] = turns
        self._conversations.move_to_end(response_id)
        while len(self._conversations) > self.capacity:
            self._conversations.popitem(last=False)
