"""Report figures computed on a hand-made trace whose answers are known."""

from __future__ import annotations

import math
from array import array

import pytest

from epp.bench.records import RequestRecord, RunResult
from epp.bench.summary import percentile, summarize


def record(
    index: int, sent: float, first: float, done: float, out: int, endpoint: str, **kw: object
) -> RequestRecord:
    return RequestRecord(
        index, "g", sent=sent, first_token=first, done=done, output_tokens=out, endpoint=endpoint, **kw
    )


def test_known_trace() -> None:
    records = [
        record(0, 0.0, 0.5, 2.0, 10, "a", prompt_tokens=100, cached_tokens=0),
        record(1, 1.0, 1.2, 3.0, 20, "a", prompt_tokens=100, cached_tokens=80),
        record(2, 2.0, 3.0, 4.0, 30, "b", prompt_tokens=200, cached_tokens=120),
        RequestRecord(3, "g", sent=3.0, error="queue_full", endpoint="b", prompt_tokens=999),
    ]
    result = RunResult(
        "virtual", records, endpoints=["a", "b", "c", "d"], itl=array("d", [0.1, 0.2, 0.3, 0.4])
    )
    s = summarize(result)
    assert (s.requests, s.completed, s.errors) == (4, 3, 1)
    assert s.duration_s == 4.0  # first sent 0.0, last done 4.0
    assert s.output_tokens_per_s == 60 / 4
    assert s.requests_per_s == 3 / 4
    # TTFTs 0.5, 0.2, 1.0 -> sorted 0.2, 0.5, 1.0; linear interpolation
    assert s.ttft_p50 == pytest.approx(0.5)
    assert s.ttft_p90 == pytest.approx(0.5 + 0.8 * 0.5)
    assert s.e2e_p50 == pytest.approx(2.0)
    assert s.itl_p50 == pytest.approx(0.25)
    assert s.itl_p99 == pytest.approx(0.1 + 0.99 * 0.3)
    assert s.hit_rate == pytest.approx(200 / 400), "failed requests' prompts do not count"
    # served: a=2, b=1, c=0, d=0 -> mean 0.75, max 2
    assert s.imbalance == pytest.approx(2 / 0.75)


def test_nothing_completed() -> None:
    s = summarize(RunResult("realtime", [RequestRecord(0, "g", error="503")], endpoints=["a"]))
    assert s.completed == 0 and s.errors == 1 and s.output_tokens_per_s == 0.0
    assert math.isnan(s.ttft_p50) and math.isnan(s.imbalance)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0
