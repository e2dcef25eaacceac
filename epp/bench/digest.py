"""A virtual run's outcome as one digest: every request record, the inter-token gaps and every
engine's counters and histograms. Equal digests mean the same run, so a change meant only to make
the harness, the simulator or a policy cheaper shows that it left the outcome alone
(`tests/unit/bench/test_bench_golden.py` pins tiny runs'; `bench/scale_digest.py` prints a scale
run's)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from epp.bench.records import RunResult
from epp.sim.engine import EngineStats
from epp.sim.histogram import Histogram


def stats_fingerprint(stats: EngineStats) -> dict[str, Any]:
    """An engine's counters and histograms as JSON values (floats by `repr`: every bit counts)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        out[f.name] = (
            [value.counts, repr(value.total), value.count] if isinstance(value, Histogram) else value
        )
    out["busy_seconds"] = repr(stats.busy_seconds)
    return out


def run_digest(result: RunResult, engines: Mapping[str, EngineStats]) -> str:
    """16 hex digits of SHA-256 over the run's records, its gaps and `engines`' statistics."""
    fingerprint = {
        "records": [
            [repr(value) if isinstance(value, float) else value for value in dataclasses.astuple(record)]
            for record in result.records
        ],
        "itl": [repr(gap) for gap in result.itl],
        "engines": {name: stats_fingerprint(stats) for name, stats in engines.items()},
    }
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
