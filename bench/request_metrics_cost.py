"""CPU the EPP spends recording one request's metrics (its routing and its end), with GIE's names
only and with `--metrics-aliases llm-d`, whose per-request families by flow (fairness id,
priority) are recorded beside GIE's (`epp.metrics.flow_requests`): both in the same run, each the
best of `--repeats` timings of `--requests` requests, as the director records them.

    .venv/bin/python bench/request_metrics_cost.py
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from epp.metrics.exporter import EppMetrics
from epp.requests import Usage


def recorder(aliases: tuple[str, ...]) -> Callable[[], None]:
    """One request's recording, as `Director._route` and `Director.finished` do it."""
    metrics = EppMetrics(aliases=aliases)
    usage = Usage(prompt_tokens=512, completion_tokens=64, cached_tokens=256)

    def request() -> None:
        series = metrics.series("model", "model")
        series.scheduled(0, 2048, "pod-0", "default", 8000)
        flow = series.flow("tenant-a", 0)
        if flow is not None:
            flow.scheduled(2048)
        series.finished(0.5, 4096, usage)
        if flow is not None:
            flow.finished(0.5, 4096, usage)

    return request


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for name, aliases in (("GIE names", ()), ("--metrics-aliases llm-d", ("llm-d",))):
        request = recorder(aliases)
        best = min(timeit.repeat(request, number=args.requests, repeat=args.repeats))
        print(f"{name}: {best / args.requests * 1e6:.2f} us per request")


if __name__ == "__main__":
    main()
