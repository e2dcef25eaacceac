"""The approximate prefix-cache index: prompt block hashing, the per-endpoint index, match data."""

from epp.scheduling.prefix.hashing import ChainCache, block_hashes, model_seed, prompt_bytes
from epp.scheduling.prefix.index import PrefixIndex, new_prefix_index
from epp.scheduling.prefix.match import PREFIX_MATCH, PrefixMatch, leading_matches

__all__ = [
    "PREFIX_MATCH",
    "ChainCache",
    "PrefixIndex",
    "PrefixMatch",
    "block_hashes",
    "leading_matches",
    "model_seed",
    "new_prefix_index",
    "prompt_bytes",
]
