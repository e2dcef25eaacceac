from collections.abc import Callable
from typing import TypeVar

_Sample = TypeVar("_Sample", bound=tuple[dict[str, str], float])

def locate(page: bytes, needle: bytes, hint: int, /) -> tuple[int, bool]: ...
def samples(
    page: bytes,
    at: int,
    walk: bool,
    name: bytes,
    family: bytes,
    cache: dict[bytes, dict[str, str]],
    parse_labels: Callable[[bytes], dict[str, str]],
    sample_type: type[_Sample],
    /,
) -> tuple[tuple[_Sample, ...], int, int]: ...
