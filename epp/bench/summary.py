"""The report's figures, computed from a run's records.

- throughput: output tokens of completed requests over the span from the first request sent to the
  last response finished (a run that overloads the cluster is charged its drain time, so the
  figure converges on what the cluster sustains rather than on the offered rate);
- latency percentiles use linear interpolation (numpy's default) over completed requests;
- prefix-cache hit rate: cached prompt tokens the simulators reported in `usage` over all prompt
  tokens, i.e. vLLM's `prefix_cache_hits / prefix_cache_queries` restricted to this run;
- load imbalance: the busiest endpoint's served requests over the mean across ALL endpoints (1.0 is
  perfectly even; an endpoint that served nothing still counts in the mean).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from epp.bench.records import RunResult


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    completed: int
    errors: int
    duration_s: float
    output_tokens_per_s: float
    requests_per_s: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    e2e_p50: float
    e2e_p99: float
    hit_rate: float
    imbalance: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Iterable[float] | np.ndarray, q: float) -> float:
    data = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    return float(np.percentile(data, q)) if data.size else math.nan


def summarize(result: RunResult) -> Summary:
    records = result.records
    done = [r for r in records if r.ok]
    ttft = [r.ttft for r in done if r.ttft is not None]
    e2e = [r.done - r.sent for r in done if r.done is not None]
    if done:
        start = min(r.sent for r in records)
        end = max(r.done for r in done if r.done is not None)
        duration = end - start
    else:
        duration = 0.0
    output = sum(r.output_tokens for r in done)
    prompt = sum(r.prompt_tokens for r in done)
    served = Counter(r.endpoint for r in done)
    loads = [served.get(name, 0) for name in result.endpoints] or [0]
    mean_load = sum(loads) / len(loads)
    itl = np.frombuffer(result.itl, dtype=float) if len(result.itl) else np.empty(0)
    return Summary(
        requests=len(records),
        completed=len(done),
        errors=sum(1 for r in records if not r.ok),
        duration_s=duration,
        output_tokens_per_s=output / duration if duration > 0 else 0.0,
        requests_per_s=len(done) / duration if duration > 0 else 0.0,
        ttft_p50=percentile(ttft, 50),
        ttft_p90=percentile(ttft, 90),
        ttft_p99=percentile(ttft, 99),
        itl_p50=percentile(itl, 50),
        itl_p99=percentile(itl, 99),
        e2e_p50=percentile(e2e, 50),
        e2e_p99=percentile(e2e, 99),
        hit_rate=sum(r.cached_tokens for r in done) / prompt if prompt else 0.0,
        imbalance=max(loads) / mean_load if mean_load > 0 else math.nan,
    )
