"""The engine requests of one HTTP request (one per choice or embedding input), and how the HTTP
handler waits on them: the engine driver calls the group's listener after every step that changes
one of them."""

from __future__ import annotations

import asyncio
from typing import Any

from epp.sim.driver import EngineDriver
from epp.sim.engine import Request, State
from epp.sim.openai_api import usage
from epp.sim.tokens import output_text, token_id
from epp.sim.tools import ToolCallPlan


class OutputSequence:
    """One choice of an HTTP request: its engine request and how many of its tokens were sent.
    With a forced tool call (`call`) its tokens are the pieces of the call's text; else words."""

    __slots__ = ("call", "index", "pieces", "request", "seed", "sent")

    def __init__(self, index: int, request: Request, seed: int, call: ToolCallPlan | None = None) -> None:
        self.index = index
        self.request = request
        self.seed = seed
        self.sent = 0
        self.call = call
        self.pieces = call.pieces if call is not None else None

    def token_text(self, index: int) -> str:
        return self.pieces[index] if self.pieces is not None else output_text(self.seed, index)

    def token_ids(self, start: int, stop: int) -> list[int]:
        """Engine ids of generated tokens ``start`` to ``stop`` (``Request.output_ids``)."""
        return [token_id(self.token_text(i)) for i in range(start, stop)]

    def text(self, start: int = 0) -> str:
        return "".join(self.token_text(i) for i in range(start, self.request.output_done))


class SequenceGroup:
    """The sequences of one HTTP request; the engine driver wakes the handler through ``event``."""

    def __init__(self, sequences: list[OutputSequence], samples: int = 1) -> None:
        self.sequences = sequences
        self.samples = samples  # choices per prompt (the request's `n`), next to each other
        self.event = asyncio.Event()
        self.submitted: list[Request] = []

    def finished(self) -> bool:
        return all(s.request.state is State.DONE for s in self.sequences)

    async def wait_finished(self) -> None:
        while not self.finished():
            await self.event.wait()
            self.event.clear()

    def abort_unfinished(self, driver: EngineDriver) -> None:
        for request in self.submitted:
            if request.state is not State.DONE:
                driver.abort(request)

    def usage(self) -> dict[str, Any]:
        """The OpenAI ``usage`` object over all sequences; a prompt sampled `n` times counts once,
        as vLLM counts it."""
        requests = [s.request for s in self.sequences]
        prompts = requests[:: self.samples]
        return usage(
            sum(r.prompt_len for r in prompts),
            sum(r.output_done for r in requests),
            sum(r.cached_tokens or 0 for r in prompts),
        )
