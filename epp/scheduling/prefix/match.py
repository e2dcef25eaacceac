"""`PrefixCacheMatchInfo`: how much of this request's prompt each candidate probably has cached.
Produced once per request; read by prefix-cache-scorer, no-hit-lru-scorer and P/D deciders."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from epp.datastore import Endpoint
from epp.framework import DataKey

PREFIX_MATCH = DataKey("PrefixCacheMatchInfo", default_producer="approx-prefix-cache-producer")


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    hashes: Sequence[int]  # a list, or an array('Q') from the compiled chain
    matched: Mapping[Endpoint, int]  # matched blocks per endpoint; absent = 0
    block_size_tokens: int

    @property
    def total_blocks(self) -> int:
        return len(self.hashes)

    def matched_blocks(self, endpoint: Endpoint) -> int:
        return self.matched.get(endpoint, 0)

    def cached_tokens(self, endpoint: Endpoint) -> int:
        """Prompt tokens this endpoint probably has cached (block granularity)."""
        return self.matched_blocks(endpoint) * self.block_size_tokens


def leading_matches(
    hashes: Sequence[int], holders_of: Callable[[int], Collection[str]], names: Collection[str]
) -> dict[str, int]:
    """How many blocks from the first each of `names` holds without a gap, walking the prompt's
    block hashes until no name holds the next one (the peers' "longest consecutive prefix")."""
    found: dict[str, int] = {}
    alive = set(names)
    for depth, block in enumerate(hashes, start=1):
        alive.intersection_update(holders_of(block))
        if not alive:
            break
        found.update(dict.fromkeys(alive, depth))
    return found
