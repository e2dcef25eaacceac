"""The overhead benchmark's prompts and per-request arithmetic."""

from __future__ import annotations

import argparse
import math
from collections import Counter
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from epp.bench.overhead import (
    PROMPT_GROUPS,
    PathRun,
    Prompts,
    add_arguments,
    held_share,
    paired,
    paired_rows,
    queue_counts,
    ratio,
)
from epp.flowcontrol.queues import Outcome
from epp.metrics.exporter import EppMetrics
from epp.requests import ApiKind, InferenceRequest
from epp.sim.tokens import tokenize


def test_prompts_have_the_stated_tokens_and_share_a_prefix_within_a_group() -> None:
    requests = Prompts(tokens=96, shared=64, seed=3).requests(rate=40.0, seconds=1.0)
    assert len(requests) == 40 and requests[1].arrival == pytest.approx(1 / 40)
    texts = ["".join(r.prompt) for r in requests]
    assert all(len(tokenize(text)) == 96 for text in texts)
    same_group = requests[0].prompt[0], requests[PROMPT_GROUPS].prompt[0]
    assert same_group[0] == same_group[1] and requests[0].prompt[0] != requests[1].prompt[0]
    assert len(set(texts)) == len(texts)  # each request's own tail differs


def test_prompts_refuse_a_shared_prefix_as_long_as_the_prompt() -> None:
    with pytest.raises(ValueError, match="--shared-tokens must be below --prompt-tokens"):
        Prompts(tokens=64, shared=64, seed=0)


def path_run(p50: float = 0.0, p99: float = 0.0, server_cpu: float = 3.0) -> PathRun:
    """1,000 requests served in 10 s."""
    return PathRun(
        p50, p99, wall=10.0, served=1000, errors=Counter(), server_cpu=server_cpu, envoy_cpu=0, sims_cpu=0
    )


def test_busy_cpu_per_request_subtracts_what_the_server_spends_idle() -> None:
    run = path_run()
    assert run.achieved == 100.0
    assert run.busy_per_request(idle=0.1) == pytest.approx((3.0 - 1.0) / 1000)
    assert run.busy_per_request(idle=0.5) == 0.0  # never negative
    assert math.isnan(ratio(0.001, 0.0)) and ratio(0.0015, 0.001) == pytest.approx(1.5)


@pytest.mark.parametrize(("flag", "value"), [("--rounds", "0"), ("--endpoints", "-3"), ("--rate", "x")])
def test_counts_and_rates_must_be_positive(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="epp bench overhead")
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([f"{flag}={value}"])
    assert f"argument {flag}: expected a positive" in capsys.readouterr().err


def test_versus_rows_give_each_rounds_difference_and_the_median_of_the_differences() -> None:
    """Round 1 is slow for both paths (a busy machine): each round's difference pairs the two paths
    under the same conditions, and the median is of those differences (+0.5 ms p50), not the
    difference of the paths' medians (4.0 - 3.0 = +1.0 ms)."""
    first = [path_run(0.010, 0.020, 2.0), path_run(0.002, 0.004, 2.0), path_run(0.003, 0.005, 3.0)]
    versus = [path_run(0.0105, 0.030, 2.5), path_run(0.0021, 0.005, 2.1), path_run(0.0040, 0.006, 3.0)]
    held = [0.0, 0.25, float("nan")]
    rounds = [
        paired(a, b, base_idle=0.1, versus_idle=0.1, held=h)
        for a, b, h in zip(first, versus, held, strict=True)
    ]
    assert rounds[0].p50 == pytest.approx(0.0005) and rounds[0].cpu == pytest.approx(0.0005)
    rows = paired_rows(300.0, rounds)
    assert [row[:4] for row in rows] == [
        ["300", "1", "+0.50", "+10.00"],
        ["300", "2", "+0.10", "+1.00"],
        ["300", "3", "+1.00", "+1.00"],
        ["300", "median", "+0.50", "+1.00"],
    ]
    # busy CPU per request: (2.0 - 0.1 * 10 s) / 1,000 requests = 1 ms for the first EPP
    assert rows[0][4:] == ["1.000 / 1.500 ms", "+0.500 ms (1.50x)", "0.0%"]
    assert rows[1][6] == "25.0%" and rows[2][6] == "—"  # nothing dispatched by flow control
    # the medians of the rounds' added CPU (0.5, 0.1, 0 ms) and ratios (1.5, 1.1, 1.0), not the
    # difference (0.5 ms) or ratio (1.5) of the medians
    assert rows[-1][4:] == ["1.000 / 1.500 ms", "+0.100 ms (1.10x)", "12.5%"]  # of the rounds measured


def test_queue_counts_read_the_requests_flow_control_held_from_the_epps_metrics_page() -> None:
    metrics = EppMetrics()
    request = InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="", model="m")
    item = SimpleNamespace(request=request, byte_size=10)
    for fairness_id, outcome, waited in [
        ("a", Outcome.DISPATCHED, 0.0002),  # through at once
        ("b", Outcome.DISPATCHED, 0.0009),
        ("b", Outcome.DISPATCHED, 0.02),  # held while the pool read as saturated
        ("a", Outcome.EVICTED_TTL, 8.0),  # not dispatched: not counted
    ]:
        metrics.flow_control.finalized(item, (fairness_id, "0"), outcome, "pool", waited)
    counts = queue_counts(generate_latest(metrics.registry).decode())
    assert counts == (3.0, 1.0)
    assert held_share((1.0, 0.0), counts) == 0.5  # of the two dispatched since, one was held
    assert math.isnan(held_share(counts, counts)) and queue_counts("") == (0.0, 0.0)
