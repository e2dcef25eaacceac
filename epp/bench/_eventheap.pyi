from array import array
from collections.abc import Callable, Sequence
from typing import Any

class DecodeRun:
    left: int
    n: int
    taken: int
    blocks_taken: int
    context: int
    last_end: float
    busy: float
    itl_total: float
    halted: int
    adds: list[int]
    def __init__(
        self,
        left: int,
        n: int,
        context: int,
        base: float,
        kv: float,
        gap: float,
        last_end: float,
        busy: float,
        itl_total: float,
        bounds: Sequence[float],
        blocks: Sequence[int],
    ) -> None: ...
    def halt(self) -> None: ...

class EventHeap:
    def push(self, at: float, handler: Callable[[float, Any], None], payload: Any, /) -> None: ...
    def pop(self) -> tuple[float, Callable[[float, Any], None], Any]: ...
    def next_time(self) -> float: ...
    def __len__(self) -> int: ...
    def push_run(
        self, at: float, handler: Callable[[float, Any], None], payload: Any, run: DecodeRun, /
    ) -> None: ...
    def pop_before(self, limit: float, /) -> tuple[float, Callable[[float, Any], None], Any] | None: ...
    def add_gaps(self, gaps: list[float], /) -> None: ...
    def take_gaps(self) -> array[float]: ...
