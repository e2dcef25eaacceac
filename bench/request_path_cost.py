"""CPU the EPP's own Python spends on one routed request of `epp bench overhead`'s case, without
gRPC: GIE's default profile over 64 ready endpoints, 4,096-token prompts (3,072 shared within 16
groups), decision records on as `epp serve` has them, and the three messages Envoy's buffered
bootstrap sends (request headers, body, response headers naming the endpoint that served), each
decoded from its wire bytes, answered by the real `ExtProcStream`, and every reply encoded.

Wall-clock figures on a shared machine move by ±20 % between runs; for a comparison of two trees,
run this under each tree's PYTHONPATH and count instructions instead, which do not move once
address randomization is off (`setarch -R`: with it on, two runs of one tree differed by 2 %;
with it off, by 31 instructions a request):

    PYTHONHASHSEED=0 setarch $(uname -m) -R valgrind --tool=cachegrind --cache-sim=no \\
        --cachegrind-out-file=/dev/null .venv/bin/python bench/request_path_cost.py --passes 1  # and 3

(the difference of the two totals, divided by twice `--requests`, is the instructions per
request; startup and the warm-up cancel out).

    .venv/bin/python bench/request_path_cost.py --requests 500 --passes 9
    .venv/bin/python bench/request_path_cost.py --metrics-aliases llm-d   # llm-d's names too
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time

import orjson
from decision_setup import build, make_pool

from epp.bench.overhead import Prompts
from epp.explain import DecisionRecorder
from epp.explain.records import RecordOptions
from epp.extproc.pb import BodyMode, core, ext_proc
from epp.extproc.stream import ExtProcStream, StreamOptions
from epp.headers import SERVED_KEY
from epp.metrics.exporter import EppMetrics
from epp.requestcontrol import Director

MODEL = "sim-model"
WARM_UP = 100  # requests routed before the passes (caches, the prefix index's first entries)


def header_map(pairs: list[tuple[str, str]]) -> core.HeaderMap:
    return core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs])


def request_messages(index: int, body: bytes) -> tuple[bytes, bytes]:
    """The request headers (as Envoy forwards an aiohttp client's) and the buffered body."""
    pairs = [
        (":authority", "127.0.0.1:10000"),
        (":path", "/v1/completions"),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("user-agent", "Python/3.11 aiohttp/3.9"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", f"5a0f3c1e-{index:04d}-4b7e-9d6f-0123456789ab"),
    ]
    headers = ext_proc.ProcessingRequest(request_headers=ext_proc.HttpHeaders(headers=header_map(pairs)))
    headers.protocol_config.request_body_mode = BodyMode.BUFFERED
    headers.protocol_config.response_body_mode = BodyMode.STREAMED
    message = ext_proc.HttpBody(body=body, end_of_stream=True)
    return headers.SerializeToString(), ext_proc.ProcessingRequest(request_body=message).SerializeToString()


def response_headers(served: str) -> bytes:
    pairs = [
        (":status", "200"),
        ("content-type", "text/event-stream"),
        ("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
        (SERVED_KEY, served),
    ]
    message = ext_proc.HttpHeaders(headers=header_map(pairs))
    return ext_proc.ProcessingRequest(response_headers=message).SerializeToString()


def answer(stream: ExtProcStream, raw: bytes) -> None:
    for reply in stream.handle(ext_proc.ProcessingRequest.FromString(raw)):
        reply.SerializeToString()


async def exchange(director: Director, options: StreamOptions, wire: tuple[bytes, bytes]) -> None:
    stream = ExtProcStream(director, options)
    for raw in wire:
        await stream.prepare(ext_proc.ProcessingRequest.FromString(raw), None)
        answer(stream, raw)
    assert stream._routed is not None, "not routed"
    answer(stream, response_headers(stream._routed.destination))
    stream.close()


async def run(args: argparse.Namespace) -> list[float]:
    """CPU µs per request of each pass over the same requests."""
    datastore = make_pool(
        args.endpoints, MODEL, random.Random(1), 4096, lambda i: f"sim-{i}", lambda i: f"127.0.0.{i + 1}"
    )
    director, _ = build(datastore, 1, metrics=EppMetrics(aliases=args.metrics_aliases))
    if args.records:
        director.recorder = DecisionRecorder(RecordOptions())
    options = StreamOptions()
    prompts = Prompts(args.prompt_tokens, args.shared_tokens, 0).requests(
        100.0, (WARM_UP + args.requests) / 100
    )
    wires = [request_messages(r.index, orjson.dumps(r.body(MODEL))) for r in prompts]
    for wire in wires[:WARM_UP]:
        await exchange(director, options, wire)
    gc.collect()
    gc.freeze()  # as `epp serve` does once it serves
    passes = []
    for _ in range(args.passes):
        started = time.process_time()
        for wire in wires[WARM_UP:]:
            await exchange(director, options, wire)
        passes.append((time.process_time() - started) / args.requests * 1e6)
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="requests a pass")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--endpoints", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--shared-tokens", type=int, default=3072)
    parser.add_argument("--no-records", dest="records", action="store_false", help="decision records off")
    parser.add_argument(
        "--metrics-aliases", action="append", default=[], help="as `epp serve --metrics-aliases` (e.g. llm-d)"
    )
    args = parser.parse_args()
    passes = asyncio.run(run(args))
    print(
        f"CPU per request: min {min(passes):.1f} us, median {statistics.median(passes):.1f} us "
        f"(passes: {' '.join(f'{p:.0f}' for p in passes)})"
    )


if __name__ == "__main__":
    main()
