from collections.abc import Sequence
from typing import SupportsIndex

def cbor_fnv_keys(tokens: Sequence[SupportsIndex], block_size: int, parent: int, /) -> list[int]: ...
