"""`burst-prefix-cache-producer` (llm-d router): co-locates a burst of requests that share a prompt
(an RL rollout step's samples of one prompt) so the prefix is prefilled once, not on every replica
of a cold pool where a cache-state scorer sees nothing yet and load balancing scatters them.

Requests arriving within `windowDurationMs` are placed jointly. Their token ids (from
`token-producer`) are cut into `blockSizeTokens` blocks and chain-hashed; requests with the same
blocks form a group, always placed whole on one replica (or `maxPerReplica` per replica, spilling
to the next least loaded). With `minColocateBlocks` > 0 a lone request sharing that many leading
blocks with another request is placed too, and a unit prefers the replica already holding the
longest such shared prefix while that replica is under its fair share of the window. Groups go
first, longest prefix first; otherwise the least loaded replica (requests, or with `balanceBy:
tokens` the prefix blocks it must still prefill) wins, then fewer running requests, then name.

The result is `PrefixCacheMatchInfo`: the whole prompt matched on the assigned replica, nothing
elsewhere; `prefix-cache-scorer` reads it through `prefixMatchInfoProducerName`. A request with no
partner in its window gets no affinity. The wait is in `prepare_async` (each request waits for its
window to close, as upstream); the placement is computed when the first request of the closed
window is scheduled, over its candidates (upstream: the first request's endpoints)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator
from xxhash import xxh64_intdigest

from epp.datalayer import AsyncDataProducer, DataProducer
from epp.datalayer.tokenize import TOKENIZED_PROMPT, TokenizedPrompt
from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch, block_hashes, model_seed
from epp.scheduling.prefix.hashing import BYTES_PER_TOKEN_ID, pack_token_ids

log = logging.getLogger(__name__)

UNLIMITED = -1
Blocks = tuple[int, ...]  # a prompt's chained block hashes
DEFAULT_MAX_PREFIX_BLOCKS = 2048  # leading blocks that form a group key at most


class BurstPrefixParams(PluginParams):
    window_duration_ms: int = Field(default=100, ge=1, le=10_000)
    max_per_replica: int = UNLIMITED
    block_size_tokens: int = Field(default=64, gt=0)
    max_prefix_tokens_to_match: int = Field(default=0, ge=0)
    min_colocate_blocks: int = Field(default=0, ge=0)
    max_batch_size: int = 1000
    balance_by: Literal["requests", "tokens", ""] = "requests"

    @model_validator(mode="after")
    def _limits(self) -> BurstPrefixParams:
        if self.max_per_replica != UNLIMITED and self.max_per_replica < 1:
            raise ValueError("maxPerReplica must be -1 (unlimited) or >= 1")
        if self.max_batch_size != UNLIMITED and self.max_batch_size < 1:
            raise ValueError("maxBatchSize must be -1 (unlimited) or >= 1")
        if 0 < self.max_prefix_tokens_to_match < self.block_size_tokens:
            raise ValueError(
                "maxPrefixTokensToMatch must be 0 or >= blockSizeTokens; a smaller value yields no blocks"
            )
        return self

    def max_blocks(self) -> int:
        if self.max_prefix_tokens_to_match > 0:
            return self.max_prefix_tokens_to_match // self.block_size_tokens
        return DEFAULT_MAX_PREFIX_BLOCKS


@dataclass(eq=False)
class _Entry:
    """One request of a window; `assigned` is the hostport it is steered to (None: no affinity)."""

    hashes: Blocks
    window: _Window
    assigned: str | None = None


@dataclass(eq=False)
class _Window:
    entries: list[_Entry] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    placed: bool = False
    overflow_logged: bool = False


@register
class BurstPrefixCacheProducer(Plugin, DataProducer, DataConsumer, AsyncDataProducer):
    type_name = "burst-prefix-cache-producer"
    Params = BurstPrefixParams
    produces = PREFIX_MATCH
    consumes = {TOKENIZED_PROMPT: ""}

    def __init__(self, name: str, params: BurstPrefixParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.by_tokens = params.balance_by == "tokens"
        self._window: _Window | None = None
        self._entry_key = f"{name}/window-entry"

    async def prepare_async(self, request: InferenceRequest) -> None:
        window = self._window
        if window is None:
            window = self._window = _Window()
            asyncio.get_running_loop().call_later(self.params.window_duration_ms / 1000, self._close, window)
        limit = self.params.max_batch_size
        if limit != UNLIMITED and len(window.entries) >= limit:
            if not window.overflow_logged:
                window.overflow_logged = True
                log.warning(
                    "%s: window full (maxBatchSize %d); requests beyond it get no burst affinity",
                    self.name,
                    limit,
                )
            return
        entry = _Entry(self._hashes(request), window)
        window.entries.append(entry)
        request.attributes[self._entry_key] = entry
        await window.closed.wait()

    def _close(self, window: _Window) -> None:
        if self._window is window:
            self._window = None
        window.closed.set()

    def _hashes(self, request: InferenceRequest) -> Blocks:
        """Chained hashes of the prompt's token blocks, a trailing partial block included (a
        prompt shorter than a block is one block), as llm-d's prefixhash."""
        tokenized = self.consumed(request, TOKENIZED_PROMPT)
        if not isinstance(tokenized, TokenizedPrompt) or not tokenized.token_ids:
            return ()
        data = pack_token_ids(tokenized.token_ids)
        seed = model_seed(request.target_model, request.cache_salt)
        size = self.params.block_size_tokens * BYTES_PER_TOKEN_ID
        if 0 < len(data) < size:
            return (xxh64_intdigest(data, seed),)
        return tuple(block_hashes(data, seed, size, self.params.max_blocks()))

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        entry = request.attributes.pop(self._entry_key, None)
        block_size = self.params.block_size_tokens
        if not isinstance(entry, _Entry) or not entry.window.closed.is_set():
            request.attributes[self.name] = PrefixMatch([], {}, block_size)
            return
        window = entry.window
        if not window.placed:
            window.placed = True
            place_window(window.entries, candidates, self.params, self.by_tokens)
        holder = next((e for e in candidates if e.hostport == entry.assigned), None)
        total = len(entry.hashes)
        matched = {holder: total} if holder is not None and total else {}
        request.attributes[self.name] = PrefixMatch(list(entry.hashes), matched, block_size)


def place_window(
    entries: Sequence[_Entry], replicas: Sequence[Endpoint], params: BurstPrefixParams, by_tokens: bool
) -> None:
    """Assign the window's requests to replicas (`_Entry.assigned`)."""
    groups: dict[Blocks, list[_Entry]] = {}
    for entry in entries:
        if entry.hashes:
            groups.setdefault(entry.hashes, []).append(entry)
    if not groups or not replicas:
        return
    shared = _shared_prefix_keys(groups, params.min_colocate_blocks)
    # Identical groups first, then prefix-sharing lone requests; longest prefix first in each.
    whole = sorted((k for k, m in groups.items() if len(m) >= 2), key=len, reverse=True)
    lone = sorted((k for k, m in groups.items() if len(m) == 1 and k in shared), key=len, reverse=True)
    units = whole + lone
    if not units:
        return
    total = sum(len(key) if by_tokens else len(groups[key]) for key in units)
    placement = _Placement(replicas, params, by_tokens, math.ceil(total / len(replicas)))
    for key in units:
        placement.place(groups[key])


def _shared_prefix_keys(groups: Mapping[Blocks, list[_Entry]], min_blocks: int) -> set[Blocks]:
    """Groups sharing at least `min_blocks` leading blocks with another request of the window."""
    if min_blocks <= 0:
        return set()
    count: dict[Blocks, int] = {}
    for key, members in groups.items():
        if len(key) >= min_blocks:
            count[key[:min_blocks]] = count.get(key[:min_blocks], 0) + len(members)
    return {key for key in groups if len(key) >= min_blocks and count[key[:min_blocks]] >= 2}


class _Placement:
    """The window's running state: which replicas hold which blocks, and each replica's load."""

    def __init__(
        self, replicas: Sequence[Endpoint], params: BurstPrefixParams, by_tokens: bool, max_share: int
    ) -> None:
        self.replicas = replicas
        self.k = params.max_per_replica
        self.min_blocks = params.min_colocate_blocks
        self.by_tokens = by_tokens
        self.max_share = max_share
        self.holders: dict[int, set[Endpoint]] = {}
        self.load: dict[Endpoint, int] = dict.fromkeys(replicas, 0)

    def place(self, members: list[_Entry]) -> None:
        hashes = members[0].hashes
        prefer_match = self.min_blocks > 0
        matches = self._longest_prefix(hashes) if prefer_match or self.by_tokens else {}
        on_replica: dict[Endpoint, int] = {}
        placed = 0
        while placed < len(members):
            target = self._pick(on_replica, matches, prefer_match)
            run = len(members) - placed
            if self.k != UNLIMITED:
                run = min(run, max(1, self.k - on_replica.get(target, 0)))
            for member in members[placed : placed + run]:
                member.assigned = target.hostport
            first_touch = on_replica.get(target, 0) == 0
            on_replica[target] = on_replica.get(target, 0) + run
            if not self.by_tokens:
                self.load[target] += run
            elif first_touch:
                # The prefix is prefilled once per replica, less what that replica already holds.
                self.load[target] += max(0, len(hashes) - matches.get(target, 0))
            placed += run
            prefer_match = False  # only the first replica gets the prefix preference
        for target in on_replica:
            for block in hashes:
                self.holders.setdefault(block, set()).add(target)

    def _longest_prefix(self, hashes: Blocks) -> dict[Endpoint, int]:
        """Per replica, the leading blocks it holds (a unit's blocks are added whole, so holding
        block i means holding every block before it)."""
        found: dict[Endpoint, int] = {}
        for block in hashes:
            holders = self.holders.get(block)
            if not holders:
                break
            for replica in holders:
                found[replica] = found.get(replica, 0) + 1
        return found

    def _has_room(self, replica: Endpoint, on_replica: Mapping[Endpoint, int]) -> bool:
        return self.k == UNLIMITED or on_replica.get(replica, 0) < self.k

    def _rank(self, replica: Endpoint) -> tuple[int, int, str]:
        return (self.load[replica], replica.metrics.running_requests_size, replica.name)

    def _pick(
        self, on_replica: Mapping[Endpoint, int], matches: Mapping[Endpoint, int], prefer_match: bool
    ) -> Endpoint:
        if prefer_match:
            eligible = [
                r
                for r in self.replicas
                if self._has_room(r, on_replica)
                and self.load[r] < self.max_share
                and matches.get(r, 0) >= self.min_blocks
            ]
            if eligible:
                return min(eligible, key=lambda r: (-matches.get(r, 0), *self._rank(r)))
        roomy = [r for r in self.replicas if self._has_room(r, on_replica)]
        return min(roomy or self.replicas, key=self._rank)
