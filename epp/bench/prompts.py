"""The token ids a simulator computes for a benchmark request, without re-tokenizing shared text.

The virtual-time engine must feed the engine the very token ids `epp sim` would derive from the
request body (completions: the prompt; chat: the rendered chat template), but tokenizing a
6,000-token prompt costs about a millisecond, too slow for 100,000 requests. The simulator's
tokenizer is prefix-stable and cuts a token wherever a letter is followed by a non-letter, so text
split at such points tokenizes to the concatenation of its pieces' tokens. Pieces (a group's
system prompt, a conversation's earlier turns) repeat across requests and are memoised; the last
piece (a request's own question) only from its second use on, as memoising each question only
filled memory (a sixth of a 1,000-endpoint run's growth, where a page first touched costs
10-20 us on the VMs the benchmarks run on); a split that is not at a clean boundary falls back to
tokenizing the whole text.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

from epp.bench.workload import BenchRequest
from epp.kvevents import prompt_block_hashes
from epp.sim.tokens import CHAT_ROLE_CLOSE, render_chat, tokenize


class PromptTokenizer:
    def __init__(self, max_memo: int = 50_000) -> None:
        self._memo: dict[str, list[int]] = {}
        self._seen: set[str] = set()  # last pieces tokenized once, not memoised yet
        self._hashes: dict[tuple[str, int, str], list[int]] = {}
        self._max_memo = max_memo
        # The last request's pieces and whether they join cleanly: `token_ids` and then
        # `block_hashes` ask for the same request (7-10 us a request inside a large run).
        self._split: tuple[BenchRequest | None, list[str], bool] = (None, [], True)

    def _pieces(self, request: BenchRequest) -> tuple[list[str], bool]:
        last, pieces, clean = self._split
        if last is not request:
            pieces = _pieces(request)
            clean = _clean_joins(pieces)
            self._split = (request, pieces, clean)
        return pieces, clean

    def token_ids(self, request: BenchRequest) -> list[int]:
        pieces, clean = self._pieces(request)
        if not clean:
            return tokenize("".join(pieces))
        ids: list[int] = []
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            ids.extend(self._piece(piece, i < last))
        return ids

    def block_hashes(
        self, request: BenchRequest, token_ids: list[int], block_size: int, namespace: str
    ) -> list[int]:
        """The engine's prompt block hashes of `token_ids` (what `token_ids(request)` gave): the
        blocks of the leading piece (a group's system prompt, a conversation's first turn), which
        then start `token_ids`, are hashed once per piece and the chain goes on from there."""
        pieces, clean = self._pieces(request)
        if not pieces or not clean:
            return prompt_block_hashes(token_ids, block_size, namespace)
        key = (pieces[0], block_size, namespace)
        known = self._hashes.get(key)
        if known is None:
            if len(self._hashes) >= self._max_memo:
                self._hashes.clear()
            leading = self._piece(pieces[0], len(pieces) > 1)
            known = self._hashes[key] = prompt_block_hashes(leading, block_size, namespace)
        return prompt_block_hashes(token_ids, block_size, namespace, known)

    def _piece(self, piece: str, leading: bool) -> list[int]:
        """The piece's ids (the caller copies them). Leading pieces (a system prompt, earlier
        turns) are memoised at once; the last (a request's own question) only when seen again."""
        ids = self._memo.get(piece)
        if ids is None:
            ids = tokenize(piece)
            if not leading:
                seen = self._seen
                if piece not in seen:
                    if len(seen) >= self._max_memo:
                        seen.clear()
                    seen.add(piece)
                    return ids
                seen.discard(piece)
            if len(self._memo) >= self._max_memo:
                self._memo.clear()
            self._memo[piece] = ids
        return ids


def _pieces(request: BenchRequest) -> list[str]:
    """The prompt's text in the pieces it was built from (chat: the rendered template cut at the
    ends of turns), empty ones left out."""
    if request.messages:
        rendered = render_chat(request.messages)
        first, *rest = rendered.split(CHAT_ROLE_CLOSE)
        pieces = [first, *(CHAT_ROLE_CLOSE + piece for piece in rest)]
    else:
        pieces = list(request.prompt)
    return [piece for piece in pieces if piece]


_LETTER = re.compile(r"[^\W\d_]")
"""The tokenizer's letter class: a token never spans a letter followed by a non-letter."""


def _clean_joins(pieces: Sequence[str]) -> bool:
    """Every join has a letter before it and a non-letter after it, so it is a token boundary."""
    letter = _LETTER.match
    return all(letter(a[-1]) and not letter(b[0]) for a, b in itertools.pairwise(pieces))
