"""What a lower saturation ceiling for the sheddable band would buy the critical band: the priority
scenario of `epp bench fairness` (virtual time), with flow control's usage-limit policy replaced
for the run by one that gives bands of priority 0 and above a ceiling of 1.0 and lower bands the
ceiling given. GIE's `static-usage-limit-policy` gives every band the same ceiling; this measures
whether reserving capacity for the higher band meets issue 14's priority goal, and what it costs
the lower one. A probe, not a plugin.

    .venv/bin/python bench/band_ceiling_probe.py 0.8 0.3
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from epp.bench.fairness import CRITICAL, SHEDDABLE, Bench, Stream, add_arguments
from epp.bench.suite import virtual_cluster
from epp.bench.virtual import VirtualRun
from epp.config.loader import load_config
from epp.flowcontrol import UsageLimitPolicy

POLICY = "least-tokens-served-fairness-policy"


class LowerBandCeiling(UsageLimitPolicy):
    def __init__(self, lower: float) -> None:
        self.lower = lower

    def ceilings(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        return [1.0 if priority >= 0 else self.lower for priority in priorities]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ceilings", type=float, nargs="+", help="the sheddable band's ceiling, per run")
    add_arguments(parser)
    args = parser.parse_args()
    bench = Bench(args)
    streams = (
        Stream(CRITICAL, args.capacity / 2, objective=CRITICAL),
        Stream(SHEDDABLE, 3 * args.capacity, objective=SHEDDABLE),
    )
    requests = [dataclasses.replace(r, index=i) for i, r in enumerate(bench.requests(streams))]
    print(
        "| sheddable ceiling | critical TTFT p50 / p90 | critical p90 in the EPP / after routing "
        "| critical out tok/s | sheddable out tok/s |"
    )
    print("|---|---|---|---|---|")
    for ceiling in args.ceilings:
        cluster = virtual_cluster(bench.spec, 0.05, 0)
        run = VirtualRun(requests, load_config(bench.configs[POLICY]), cluster, bench.objectives)
        assert run.director.flow_control is not None
        run.director.flow_control.usage_limit = LowerBandCeiling(ceiling)
        result = run.run()
        critical = bench.measure(result, run.routed_at, CRITICAL)
        sheddable = bench.measure(result, run.routed_at, SHEDDABLE)
        print(
            f"| {ceiling:g} | {critical.ttft_p50 * 1000:.0f} / {critical.ttft_p90 * 1000:.0f} ms "
            f"| {critical.queued_p90 * 1000:.0f} / {critical.served_p90 * 1000:.0f} ms "
            f"| {critical.tokens_per_s:,.0f} | {sheddable.tokens_per_s:,.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
