from collections.abc import Callable
from typing import Protocol, TypeVar

_Sample = TypeVar("_Sample", bound=tuple[dict[str, str], float])

class _Seen(Protocol):
    at: int
    back: int
    changed: bool
    from_start: bool
    to_end: bool
    window: bytes | None

def locate(page: bytes, needle: bytes, hint: int, /) -> tuple[int, bool]: ...
def read(
    needle: bytes,
    family: bytes,
    cache: dict[bytes, dict[str, str]],
    parse_labels: Callable[[bytes], dict[str, str]],
    sample_type: type[_Sample],
    page: bytes,
    seen: _Seen,
    /,
) -> tuple[_Sample, ...]: ...
