"""Parameters of the approximate prefix index. GIE v1.5+ reads them on approx-prefix-cache-producer,
older GIE on prefix-cache-scorer; both plugins accept them so configs from every version load."""

from __future__ import annotations

from pydantic import Field

from epp.framework import PluginParams


class PrefixIndexParams(PluginParams):
    auto_tune: bool = True
    block_size_tokens: int = Field(default=16, gt=0)
    block_size: int | None = Field(default=None, gt=0, description="deprecated: block size in characters")
    max_prefix_blocks_to_match: int = Field(default=256, ge=0)
    max_prefix_tokens_to_match: int = Field(default=0, ge=0)
    lru_capacity_per_server: int = Field(default=31250, gt=0)

    def configured_block_tokens(self) -> int:
        """`blockSizeTokens`, or the deprecated character `blockSize` / 4 when only that is set."""
        if self.block_size is not None and "block_size_tokens" not in self.model_fields_set:
            return max(1, self.block_size // 4)
        return self.block_size_tokens

    def max_blocks(self, block_tokens: int) -> int:
        """`maxPrefixTokensToMatch / blockSize` when set, else `maxPrefixBlocksToMatch` (0 = all)."""
        if self.max_prefix_tokens_to_match > 0:
            return max(1, self.max_prefix_tokens_to_match // block_tokens)
        return self.max_prefix_blocks_to_match
