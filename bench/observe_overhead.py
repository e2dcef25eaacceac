"""What decision records and tracing cost the EPP per request, in CPU time, side by side.

Each request is a whole ext_proc exchange driven through the EPP's own `ExtProcStream` in this
process (request headers, body, response headers, response end — everything the EPP does for a
request except gRPC's transport): parsing, candidates, admission, GIE's default scheduler over
`--endpoints` endpoints with ~4 KB shared-prefix prompts, metrics, the replies. The variants run
interleaved in rounds (each round runs every variant in a new random order) and each is reported
as the minimum and the median over rounds of CPU time per request (the minimum is the
least disturbed by other work on a shared machine), measured with `time.process_time` (every
thread of this process, so the span exporter's thread counts; other processes on a shared
machine do not). Tracing variants export through a `BatchSpanProcessor` into an exporter that
encodes every span as OTLP protobuf and drops the bytes (no network), and are flushed inside the
measured window.

    .venv/bin/python bench/observe_overhead.py [--endpoints N] [--requests N] [--rounds N]

With `--stack`, the same comparison on the real thing: Envoy, `epp serve` and two simulators (as
`epp bench overhead` runs them), tiny requests at `--rate` req/s through Envoy, the EPP restarted
with each variant's flags in turn, round after round; the figure is the EPP process's CPU time
(utime + stime) divided by the requests it served. Spans go over OTLP/HTTP to a receiver in this
process that drops them.

    .venv/bin/python bench/observe_overhead.py --stack [--rate 300] [--seconds 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import orjson
from aiohttp import web
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

from epp import tracing
from epp.bench import overhead
from epp.config.build import build_director
from epp.config.loader import load_config
from epp.config.model import PickerConfig
from epp.datastore import Datastore, EndpointSpec
from epp.explain import DecisionRecorder, RecordOptions
from epp.extproc.pb import BodyMode, core, ext_proc
from epp.extproc.stream import ExtProcStream, StreamOptions
from epp.framework import PluginContext
from epp.requestcontrol import Director
from epp.stack.envoy import EnvoyOptions
from epp.stack.stack import Stack, StackConfig
from epp.tracing.spans import Tracing

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PREFIX_GROUPS = 50
PROMPT_BYTES = 4096


class EncodingExporter(SpanExporter):
    """Encodes spans as an OTLP export request would, then drops them."""

    def __init__(self) -> None:
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Variant:
    name: str
    records: RecordOptions | None
    sampler: object | None  # None: tracing off

    def apply(self, director: Director) -> Tracing | None:
        director.recorder = DecisionRecorder(self.records) if self.records else None
        if self.sampler is None:
            tracing.install(None)
            return None
        traced = Tracing(BatchSpanProcessor(EncodingExporter()), self.sampler)  # type: ignore[arg-type]
        tracing.install(traced)
        return traced


VARIANTS = [
    Variant("baseline: records off, tracing off", None, None),
    Variant("records on, every request (default)", RecordOptions(), None),
    Variant("records on, 10% sampled", RecordOptions(sample_rate=0.1), None),
    Variant("tracing on, every request sampled", None, ALWAYS_ON),
    Variant("tracing on, GIE's default sampler (10%)", None, ParentBased(TraceIdRatioBased(0.1))),
    Variant("records on + tracing on (every request)", RecordOptions(), ALWAYS_ON),
]


def make_director(endpoints: int, rng: random.Random, config: PickerConfig | None = None) -> Director:
    """GIE's default profile (or `config`) over `endpoints` fresh endpoints that never saturate."""
    datastore = Datastore()
    for i in range(endpoints):
        spec = EndpointSpec(f"vllm-{i}", f"10.0.0.{i + 1}", 8000, MappingProxyType({}), frozenset({MODEL}))
        metrics = datastore.upsert(spec).metrics
        metrics.waiting_queue_size = rng.randrange(0, 4)
        metrics.kv_cache_usage = rng.uniform(0.0, 0.5)
        metrics.update_time = time.monotonic() + 1e9  # never stale during the run
    datastore.synced = True
    return build_director(config or load_config(), datastore, PluginContext())[0]


def messages(rng: random.Random) -> Callable[[int], list[ext_proc.ProcessingRequest]]:
    prefixes = [rng.randbytes(PROMPT_BYTES // 2).hex()[: PROMPT_BYTES * 3 // 4] for _ in range(PREFIX_GROUPS)]
    mode = BodyMode.FULL_DUPLEX_STREAMED
    status = core.HeaderMap(headers=[core.HeaderValue(key=":status", raw_value=b"200")])

    def exchange(i: int) -> list[ext_proc.ProcessingRequest]:
        prompt = rng.choice(prefixes) + f" question {i}: " + rng.randbytes(PROMPT_BYTES // 8).hex()
        body = orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 16})
        headers = {":path": "/v1/completions", ":method": "POST", "content-type": "application/json"}
        return [
            ext_proc.ProcessingRequest(
                request_headers=ext_proc.HttpHeaders(
                    headers=core.HeaderMap(
                        headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
                    )
                ),
                protocol_config=ext_proc.ProtocolConfiguration(
                    request_body_mode=mode, response_body_mode=mode
                ),
            ),
            ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=True)),
            ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders(headers=status)),
            ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=b"{}", end_of_stream=True)),
        ]

    return exchange


def run_round(
    director: Director, traced: Tracing | None, batch: list[list[ext_proc.ProcessingRequest]]
) -> float:
    options = StreamOptions()
    gc.collect()
    started = time.process_time()
    for exchange in batch:
        stream = ExtProcStream(director, options)
        for message in exchange:
            for _ in stream.handle(message):
                pass
        stream.close()
    if traced is not None:
        traced.provider.force_flush()
    return (time.process_time() - started) / len(batch)


STACK_VARIANTS: list[tuple[str, list[str], dict[str, str]]] = [
    ("baseline: records off, tracing off", ["--decision-records=0"], {}),
    ("records on, every request (default)", [], {}),
    (
        "tracing on, every request sampled",
        ["--decision-records=0", "--tracing"],
        {"OTEL_TRACES_SAMPLER": "always_on"},
    ),
    ("tracing on, GIE's default sampler (10%)", ["--decision-records=0", "--tracing"], {}),
    ("records on + tracing on (every request)", ["--tracing"], {"OTEL_TRACES_SAMPLER": "always_on"}),
]


async def _discard(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(
        body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
    )


async def run_stack(args: argparse.Namespace) -> None:
    receiver = web.AppRunner(web.Application(), access_log=None)
    receiver.app.router.add_post("/v1/traces", _discard)
    await receiver.setup()
    await web.TCPSite(receiver, "127.0.0.1", 0).start()
    os.environ.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.addresses[0][1]}",
    )
    config = StackConfig(
        run_dir=args.run_dir,
        sims=2,
        model=overhead.MODEL,
        sim_args=["--profile=tiny-test", "--time-scale=0.001"],
        epp_args=["--refresh-metrics-interval=50ms"],
        envoy=EnvoyOptions(listen_port=0, admin_port=0),
    )
    base_args = list(config.epp_args)
    results: dict[str, list[float]] = {name: [] for name, _, _ in STACK_VARIANTS}
    errors = dict.fromkeys(results, 0)
    rng = random.Random(args.seed)
    prompts = overhead.Prompts(tokens=5, shared=0, seed=args.seed)  # tiny requests
    async with Stack(config) as stack:
        for _ in range(args.rounds):
            order = list(STACK_VARIANTS)
            rng.shuffle(order)
            for name, flags, env in order:
                os.environ.pop("OTEL_TRACES_SAMPLER", None)
                os.environ.update(env)
                await stack.stop_epp()
                stack.config.epp_args = [*base_args, *flags]
                await stack.start_epp()
                await overhead.measure(stack, stack.gateway_url, stack.epp, prompts.requests(50.0, 1.0))
                run = await overhead.measure(
                    stack, stack.gateway_url, stack.epp, prompts.requests(args.rate, args.seconds)
                )
                errors[name] += sum(run.errors.values())
                results[name].append(run.per_request(run.server_cpu))
                print(f"{name}: {run.per_request(run.server_cpu) * 1e3:.3f} ms/request", flush=True)
    await receiver.cleanup()
    base = statistics.median(results[STACK_VARIANTS[0][0]])
    print(
        f"\n`epp serve` behind Envoy, 2 simulators, {args.rate:g} req/s of tiny requests for "
        f"{args.seconds:g} s per variant and round, {args.rounds} rounds; EPP CPU time per request "
        "(idle scraping included), median over rounds\n"
    )
    print("| variant | EPP CPU per request | added | added, % of baseline | errors |")
    print("|---|---|---|---|---|")
    for name, _, _ in STACK_VARIANTS:
        median = statistics.median(results[name])
        print(
            f"| {name} | {median * 1e3:.3f} ms | {(median - base) * 1e6:+.0f} µs "
            f"| {(median - base) / base:+.1%} | {errors[name]} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stack", action="store_true", help="measure the real EPP process behind Envoy")
    parser.add_argument("--rate", type=float, default=300.0, help="with --stack: req/s (default 300)")
    parser.add_argument("--seconds", type=float, default=6.0, help="with --stack: per variant and round")
    parser.add_argument("--run-dir", type=Path, default=Path("run/bench-observe"))
    args = parser.parse_args()
    if args.stack:
        if args.rounds == 60:
            args.rounds = 3
        asyncio.run(run_stack(args))
        return
    rng = random.Random(args.seed)
    director = make_director(args.endpoints, rng)
    exchange = messages(rng)
    batches = [[exchange(i) for i in range(args.requests)] for _ in range(2)]
    Variant("warm-up", None, None).apply(director)
    run_round(director, None, batches[0])  # the prefix index and the interpreter warm up
    results: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS)
        rng.shuffle(order)
        for variant in order:
            traced = variant.apply(director)
            results[variant.name].append(run_round(director, traced, batches[r % 2]))
            if traced is not None:
                traced.shutdown()
    tracing.install(None)
    base_min = min(results[VARIANTS[0].name])
    base = statistics.median(results[VARIANTS[0].name])
    print(
        f"{args.requests} requests x {args.rounds} rounds per variant, {args.endpoints} endpoints, "
        f"GIE's default profile, ~{PROMPT_BYTES // 1024} KB shared-prefix prompts; CPU time per request, "
        "minimum and median over rounds\n"
    )
    print("| variant | CPU per request, min / median | added (min) | added (median) |")
    print("|---|---|---|---|")
    for variant in VARIANTS:
        values = results[variant.name]
        low, median = min(values), statistics.median(values)
        print(
            f"| {variant.name} | {low * 1e6:.0f} / {median * 1e6:.0f} µs "
            f"| {(low - base_min) * 1e6:+.1f} µs ({(low - base_min) / base_min:+.1%}) "
            f"| {(median - base) * 1e6:+.1f} µs ({(median - base) / base:+.1%}) |"
        )


if __name__ == "__main__":
    main()
