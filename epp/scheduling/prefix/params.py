"""Parameters of the approximate prefix index. GIE v1.5+ reads them on approx-prefix-cache-producer,
older GIE on prefix-cache-scorer; both plugins accept them so configs from every version load."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from epp.framework import ParameterUpgrade, PluginParams


class PrefixIndexParams(PluginParams):
    # GIE v1.0-v1.2 (and llm-d <= v0.5): `hashBlockSize`, characters; v1.3: `blockSize`, characters;
    # v1.4+: `blockSizeTokens`.
    renamed: ClassVar[Mapping[str, str]] = {"hashBlockSize": "blockSize"}

    auto_tune: bool = True
    block_size_tokens: int = Field(default=16, gt=0)
    block_size: int | None = Field(default=None, gt=0, description="deprecated: block size in characters")
    max_prefix_blocks_to_match: int = Field(default=256, ge=0)
    max_prefix_tokens_to_match: int = Field(default=0, ge=0)
    lru_capacity_per_server: int = Field(default=31250, gt=0)

    @classmethod
    def upgrade(cls, raw: Mapping[str, Any], type_name: str = "") -> ParameterUpgrade:
        upgrade = super().upgrade(raw, type_name)
        params = upgrade.parameters
        chars = params.get("blockSize")
        if (
            isinstance(chars, int)
            and not isinstance(chars, bool)
            and chars > 0
            and "blockSizeTokens" not in params
        ):
            params["blockSizeTokens"] = max(1, chars // 4)
            del params["blockSize"]
            upgrade.warnings.append(
                f"blockSize (characters, GIE <= v1.3) is deprecated: read as blockSizeTokens "
                f"{params['blockSizeTokens']} (blockSize / 4 characters per token)"
            )
        # llm-d v0.2-v0.5 prefix-cache-scorer: `mode: estimate` is this index; `cache_tracking`
        # was the precise (KV-event) prefix cache, which that scorer reads as precise-prefix-cache-scorer.
        mode = params.pop("mode", None)
        if mode == "cache_tracking":
            upgrade.problems.append(
                "mode cache_tracking (llm-d v0.2-v0.5) is a prefix-cache-scorer setting that selects the "
                "precise (KV-event) prefix cache; here use precise-prefix-cache-producer"
            )
        elif mode is not None:
            upgrade.warnings.append(
                f"mode {mode!r} (llm-d <= v0.5) is deprecated: the approximate prefix index is always used"
            )
        return upgrade

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
