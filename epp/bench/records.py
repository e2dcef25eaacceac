"""What a run observed, in the same shape from both engines, so one summary code path serves both.

Times are seconds of modelled time since the run started: the real-time engine divides wall time
by the simulators' time scale, the virtual-time engine reports its clock. Inter-token gaps of every
request go into one flat array, since the summary needs only their distribution.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    index: int
    group: str
    sent: float = 0.0
    first_token: float | None = None
    done: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    endpoint: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.done is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def e2e(self) -> float | None:
        return None if self.done is None else self.done - self.sent


@dataclass(slots=True)
class RunResult:
    """One run: a workload at one rate under one scheduler. `endpoints` lists every endpoint of the
    cluster (those that served nothing count for load imbalance); `wall_seconds` is what the run
    cost on this machine."""

    engine: str
    records: list[RequestRecord]
    endpoints: list[str]
    itl: array[float] = field(default_factory=lambda: array("d"))
    wall_seconds: float = 0.0
