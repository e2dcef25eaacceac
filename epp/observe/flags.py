"""`epp serve` flags for decision records, the explanation header and tracing."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from epp.explain import RecordOptions
from epp.params.flagtypes import number_in_range
from epp.tls import parse_bool


@dataclass(frozen=True)
class ObserveOptions:
    records: RecordOptions = field(default_factory=RecordOptions)
    tracing: bool = False


_rate = number_in_range(float, 0.0, 1.0, message="must be between 0 and 1, not {text}", name="_rate")
_count = number_in_range(int, 0, message="must be ≥ 0, not {text}", name="_count")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "observability (decision records, live view on the metrics port, tracing)"
    )
    group.add_argument(
        "--decision-records",
        type=_count,
        default=1000,
        metavar="N",
        help="keep the last N scheduling decisions for /api/decisions and the live view "
        "(default 1000; 0 = off)",
    )
    group.add_argument(
        "--decision-sample-rate",
        type=_rate,
        default=1.0,
        metavar="FRACTION",
        help="fraction of requests whose decision is recorded (default 1.0)",
    )
    group.add_argument(
        "--decision-record-prompts",
        action="store_true",
        help="also keep the first 4096 characters of each recorded request's prompt (off by default)",
    )
    group.add_argument(
        "--decision-explain-header",
        action="store_true",
        help="a request with header `x-epp-explain: true` gets its decision as JSON in response header "
        "`x-epp-explanation` (off by default: it names pod addresses)",
    )
    group.add_argument(
        "--tracing",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="OpenTelemetry tracing, configured by the OTEL_* environment variables (GIE's flag; default "
        "false here)",
    )


def options_from_args(args: argparse.Namespace) -> ObserveOptions:
    return ObserveOptions(
        records=RecordOptions(
            capacity=args.decision_records,
            sample_rate=args.decision_sample_rate,
            record_prompts=args.decision_record_prompts,
            explain_header=args.decision_explain_header,
        ),
        tracing=args.tracing,
    )
