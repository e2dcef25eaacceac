"""When does P/D pay? Aggregated vs prefill/decode-disaggregated serving on the same number of
simulated GPUs (default 4 aggregated vs 2 prefill + 2 decode), across prompt/output length mixes
and load levels, in virtual time: TTFT, inter-token latency and output throughput, as a table.

Both arms route through the EPP's own Director exactly as `epp serve` builds it. The aggregated arm
runs the P/D config's decode profile alone (decode-filter, prefix-cache 2, queue 1) on unlabelled
endpoints; the disaggregated arm runs llm-d's pd-epp-config (the same decode profile, the
prefix-based decider with nonCachedTokens 16, the same scorers on a prefill profile) on endpoints
labelled prefill or decode. Every prompt is unique, so every request of the P/D arm is prefilled
remotely. Each endpoint is the simulator's engine (`epp.sim.engine`), stepped by the bench
package's virtual-time loop (`epp.bench.virtual`); the P/D legs follow the simulator's NixlConnector
semantics (docs/simulator.md): the prefill leg computes the prompt and emits one token, its KV stays
leased until the decode leg is accepted on the decode engine, which waits for the modelled KV
transfer, then decodes. The client's first token is the decode leg's first token. Not modelled:
HTTP, Envoy and the sidecar hop (a millisecond or two per request in real time).

Load is a fraction of the aggregated cluster's capacity for the mix, measured first by a burst of
requests all sent at once; both arms get the same Poisson arrivals.

    .venv/bin/python bench/pd_bench.py [--isl 500 2000 8000] [--osl 50 250 1000]
        [--loads 0.25 0.5 0.8] [--requests 300] [--split 2:2] [--profile llama-3.1-8b-h100]
        [--max-num-batched-tokens N] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from epp.bench.records import RequestRecord, RunResult
from epp.bench.summary import Summary, summarize
from epp.bench.virtual import EngineSequence, VirtualCluster, VirtualRun, run_virtual
from epp.bench.workload import BenchRequest, Length, Load, Mixed, WorkloadSpec, generate
from epp.config.loader import load_config, load_config_file
from epp.config.model import PickerConfig
from epp.datastore import Endpoint
from epp.datastore.endpoint import ROLE_LABEL
from epp.requestcontrol.director import RoutedRequest
from epp.sim.engine import StepOutcome
from epp.sim.profiles import get_profile

PD_CONFIG = Path(__file__).parents[1] / "epp" / "config" / "samples" / "pd-epp-config.yaml"
AGGREGATED_CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters: {maxPrefixTokensToMatch: 16384, lruCapacityPerServer: 31250}
- type: prefix-cache-scorer
- type: queue-scorer
- type: decode-filter
- type: max-score-picker
schedulingProfiles:
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: queue-scorer, weight: 1}
"""


class _PrefillLeg(EngineSequence):
    """The prefill leg of a P/D request: one output token, its KV leased for the decode engine."""

    __slots__ = ("decode", "max_tokens", "prefiller")

    def __init__(
        self,
        token_ids: list[int],
        now: float,
        record: RequestRecord,
        prefiller: str,
        decode: Endpoint,
        max_tokens: int,
    ) -> None:
        super().__init__(token_ids, 1, now, record)
        self.hold_blocks = True
        self.prefiller = prefiller
        self.decode = decode
        self.max_tokens = max_tokens


class PDVirtualRun(VirtualRun):
    """A virtual run whose first `prefillers` endpoints are labelled prefill and the rest decode;
    a request the EPP gives a prefill endpoint runs a prefill leg there, then its decode leg."""

    def __init__(
        self, requests: Sequence[BenchRequest], config: PickerConfig, cluster: VirtualCluster, prefillers: int
    ) -> None:
        super().__init__(requests, config, cluster)
        # Set the role labels on the very objects the director, plugins and servers already share
        # (upserting new specs into the datastore would replace them).
        for i, endpoint in enumerate(self.endpoints):
            role = "prefill" if i < prefillers else "decode"
            endpoint.spec = replace(endpoint.spec, labels=MappingProxyType({ROLE_LABEL: role}))

    def dispatch(
        self,
        routed: RoutedRequest,
        request: BenchRequest,
        token_ids: list[int],
        record: RequestRecord,
        now: float,
    ) -> None:
        prefill = routed.result.profile_results.get("prefill")
        if prefill is None:
            super().dispatch(routed, request, token_ids, record, now)
            return
        prefiller = prefill.targets[0]
        leg = _PrefillLeg(
            token_ids, now, record, prefiller.name, routed.result.targets[0], request.max_tokens
        )
        # The client's response starts with the decode leg (relayed by the sidecar), not here.
        self.admit_to_engine(leg, prefiller, routed, now, starts_response=False)

    def deliver(self, outcome: StepOutcome, now: float) -> None:
        legs = [s for s in outcome.finished if isinstance(s, _PrefillLeg)]
        if legs:  # a prefill leg's single token never reaches the client
            outcome = replace(
                outcome,
                first_tokens=[s for s in outcome.first_tokens if not isinstance(s, _PrefillLeg)],
                finished=[s for s in outcome.finished if not isinstance(s, _PrefillLeg)],
            )
        super().deliver(outcome, now)
        for leg in legs:
            self._decode(leg, now)

    def _decode(self, leg: _PrefillLeg, now: float) -> None:
        """The sidecar's decode leg: accepted by the decode engine, which frees the prefiller's
        lease (as the simulator does) and waits for the KV transfer before decoding."""
        assert leg.lease_key is not None and leg.routed is not None
        self.servers[leg.prefiller].engine.release_lease(leg.lease_key)
        sequence = EngineSequence(list(leg.prompt_tokens), leg.max_tokens, now, leg.record)
        sequence.remote_prefill = True
        sequence.block_hashes = leg.block_hashes
        self.admit_to_engine(sequence, leg.decode, leg.routed, now, starts_response=True)


# --- the sweep -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    isl: int
    osl: int
    load: float  # fraction of the aggregated cluster's measured capacity
    rate: float  # requests/s offered to both arms


@dataclass(frozen=True)
class Settings:
    requests: int
    prefillers: int
    decoders: int
    profile: str
    seed: int
    max_num_batched_tokens: int | None = None  # every engine's chunked-prefill budget; None: the profile's

    @property
    def gpus(self) -> int:
        return self.prefillers + self.decoders

    def cluster(self) -> VirtualCluster:
        profile = get_profile(self.profile).with_overrides(max_num_batched_tokens=self.max_num_batched_tokens)
        return VirtualCluster(self.gpus, profile, seed=self.seed)

    def requests_at(self, isl: int, osl: int, rate: float) -> list[BenchRequest]:
        data = Mixed(
            type="mixed", requests=self.requests, prompt_len=Length(mean=isl), output_len=Length(mean=osl)
        )
        spec = WorkloadSpec(name=f"isl{isl}-osl{osl}", seed=self.seed, data=data, load=Load(rates=[rate]))
        return generate(spec, rate)


BURST_RATE = 1e9  # every request sent at (virtually) the same instant


def capacity(settings: Settings, isl: int, osl: int) -> float:
    """Requests/s the aggregated cluster completes when all requests arrive at once."""
    requests = settings.requests_at(isl, osl, BURST_RATE)
    return summarize(run_virtual(requests, load_config(AGGREGATED_CONFIG), settings.cluster())).requests_per_s


def compare(settings: Settings, point: Point) -> tuple[Point, Summary, Summary]:
    requests = settings.requests_at(point.isl, point.osl, point.rate)
    cluster = settings.cluster()
    aggregated = run_virtual(requests, load_config(AGGREGATED_CONFIG), cluster)
    disaggregated = PDVirtualRun(requests, load_config_file(PD_CONFIG), cluster, settings.prefillers).run()
    return point, summarize(aggregated), summarize(_checked(disaggregated, settings.prefillers))


def _checked(result: RunResult, prefillers: int) -> RunResult:
    """Every completed request of the P/D arm was decoded on a decode endpoint."""
    decoders = set(result.endpoints[prefillers:])
    assert all(r.endpoint in decoders for r in result.records if r.ok), "a request decoded on a prefiller"
    return result


# --- the table -------------------------------------------------------------------------------------

BETTER_BY = 0.05  # a difference smaller than 5 % is called a tie
METRICS = (  # (column, Summary field, scale, lower is better)
    ("TTFT p50 ms", "ttft_p50", 1000.0, True),
    ("TTFT p99 ms", "ttft_p99", 1000.0, True),
    ("ITL p50 ms", "itl_p50", 1000.0, True),
    ("ITL p99 ms", "itl_p99", 1000.0, True),
    ("out tok/s", "output_tokens_per_s", 1.0, False),
)


def _cell(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _wins(aggregated: Summary, disaggregated: Summary) -> str:
    names = []
    for column, field, _, lower in METRICS:
        a, d = getattr(aggregated, field), getattr(disaggregated, field)
        better = d < a * (1 - BETTER_BY) if lower else d > a * (1 + BETTER_BY)
        if better:
            names.append(column.removesuffix(" ms"))
    return ", ".join(names) or "-"


def table(rows: list[tuple[Point, Summary, Summary]], settings: Settings) -> str:
    arms = f"{settings.gpus} aggregated / {settings.prefillers}P+{settings.decoders}D"
    header = ["ISL", "OSL", "load", "req/s", *(f"{c} ({arms})" for c, *_ in METRICS), "P/D better on"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point, aggregated, disaggregated in rows:
        cells = [str(point.isl), str(point.osl), f"{point.load:.2f}", f"{point.rate:.3g}"]
        for _, field, scale, _ in METRICS:
            a, d = getattr(aggregated, field) * scale, getattr(disaggregated, field) * scale
            cells.append(f"{_cell(a)} / {_cell(d)}")
        cells.append(_wins(aggregated, disaggregated))
        errors = aggregated.errors + disaggregated.errors
        if errors:
            cells[-1] += f" ({aggregated.errors} / {disaggregated.errors} errors)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--isl", type=int, nargs="+", default=[500, 2000, 8000], help="prompt lengths (tokens)"
    )
    parser.add_argument("--osl", type=int, nargs="+", default=[50, 250, 1000], help="output lengths (tokens)")
    parser.add_argument(
        "--loads", type=float, nargs="+", default=[0.25, 0.5, 0.8], help="fractions of aggregated capacity"
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per run (default 300)")
    parser.add_argument(
        "--split", default="2:2", help="PREFILL:DECODE endpoints of the P/D arm (default 2:2)"
    )
    parser.add_argument("--profile", default="llama-3.1-8b-h100", help="simulator profile")
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="chunked-prefill budget of every engine (default: the profile's, vLLM's 8192): smaller chunks "
        "cut the aggregated arm's decode stalls at some TTFT cost",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel runs")
    args = parser.parse_args(argv)
    prefillers, _, decoders = args.split.partition(":")
    settings = Settings(
        args.requests, int(prefillers), int(decoders), args.profile, args.seed, args.max_num_batched_tokens
    )
    mixes = [(isl, osl) for isl in args.isl for osl in args.osl]
    with ProcessPoolExecutor(args.jobs) as pool:
        measured = pool.map(capacity, [settings] * len(mixes), *zip(*mixes, strict=True))
        capacities = dict(zip(mixes, measured, strict=True))
        points = [
            Point(isl, osl, load, capacities[isl, osl] * load) for isl, osl in mixes for load in args.loads
        ]
        rows = list(pool.map(compare, [settings] * len(points), points))
    print(table(rows, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
