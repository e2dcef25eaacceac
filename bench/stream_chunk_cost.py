"""CPU the EPP's ext_proc state machine spends per message, as Envoy AI Gateway drives it
(FULL_DUPLEX_STREAMED both ways: every streamed token's chunk passes through the EPP) and as our
buffered bootstrap does (response chunks skipped after the headers).

Each message is decoded from its wire bytes, handled by the real `ExtProcStream` with the real
director and default profile, and every reply encoded, as the gRPC server does around it; gRPC's
own transport cost is not included there. `--through-envoy` measures the whole EPP process
instead (its CPU seconds from /proc, gRPC included) while real Envoy, in each body mode, passes
streamed completions from simulators. Run:

    .venv/bin/python bench/stream_chunk_cost.py --tokens 1000 --requests 200
    .venv/bin/python bench/stream_chunk_cost.py --tokens 1000 --requests 40 --through-envoy
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import httpx
import orjson

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.extproc.pb import BodyMode, core, ext_proc
from epp.extproc.stream import ExtProcStream, StreamOptions
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.stack.envoy import EnvoyOptions
from epp.stack.stack import Stack, StackConfig

FDS, BUFFERED, STREAMED = BodyMode.FULL_DUPLEX_STREAMED, BodyMode.BUFFERED, BodyMode.STREAMED


def headers(pairs: dict[str, str], end: bool, request_mode: int, response_mode: int) -> bytes:
    message = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=core.HeaderMap(
                headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
            ),
            end_of_stream=end,
        ),
        protocol_config=ext_proc.ProtocolConfiguration(
            request_body_mode=request_mode, response_body_mode=response_mode
        ),
    )
    return message.SerializeToString()


def token_chunk(i: int) -> bytes:
    """One vLLM streamed completion chunk (one token), as it arrives from the model server."""
    event = {
        "id": "cmpl-7f3c",
        "object": "text_completion",
        "created": 1765000000,
        "model": "sim-model",
        "choices": [{"index": 0, "text": f" tok{i}", "logprobs": None, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def usage_chunk(tokens: int) -> bytes:
    event = {
        "id": "cmpl-7f3c",
        "object": "text_completion",
        "created": 1765000000,
        "model": "sim-model",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": tokens + 12},
    }
    return b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"


def exchange(tokens: int, request_mode: int, response_mode: int) -> list[bytes]:
    """Wire bytes of one streamed completion's ext_proc messages, in Envoy's order."""
    body = orjson.dumps({"model": "sim-model", "prompt": "tell me a story " * 20, "stream": True})
    messages = [
        headers({":path": "/v1/completions", ":method": "POST"}, False, request_mode, response_mode),
        ext_proc.ProcessingRequest(
            request_body=ext_proc.HttpBody(body=body, end_of_stream=True)
        ).SerializeToString(),
        ext_proc.ProcessingRequest(
            response_headers=ext_proc.HttpHeaders(
                headers=core.HeaderMap(
                    headers=[
                        core.HeaderValue(key=":status", raw_value=b"200"),
                        core.HeaderValue(key="content-type", raw_value=b"text/event-stream"),
                    ]
                )
            )
        ).SerializeToString(),
    ]
    if response_mode == FDS:
        chunks = [token_chunk(i) for i in range(tokens)] + [usage_chunk(tokens)]
        last = len(chunks) - 1
        messages += [
            ext_proc.ProcessingRequest(
                response_body=ext_proc.HttpBody(body=chunk, end_of_stream=i == last)
            ).SerializeToString()
            for i, chunk in enumerate(chunks)
        ]
    return messages


def director() -> Callable[[], ExtProcStream]:
    datastore = Datastore()
    datastore.replace_all(
        [
            EndpointSpec(name=f"e{i}", address=f"10.0.0.{i}", port=8000, labels=MappingProxyType({}))
            for i in range(8)
        ]
    )
    built, _ = build_director(load_config(), datastore, PluginContext(EppMetrics(), random.Random(1)))
    return lambda: ExtProcStream(built, StreamOptions())


def handle(stream: ExtProcStream, wire: list[bytes]) -> None:
    for raw in wire:
        for reply in stream.handle(ext_proc.ProcessingRequest.FromString(raw)):
            reply.SerializeToString()


def run(make: Callable[[], ExtProcStream], wire: list[bytes], repeat: int) -> tuple[float, float]:
    """(CPU seconds per exchange, CPU seconds per response-body message): the first three
    messages (request headers, body, response headers) and the chunks are timed apart."""
    head, chunks = wire[:3], wire[3:]
    head_cpu = chunks_cpu = 0.0
    for _ in range(repeat):
        stream = make()
        started = time.thread_time()
        handle(stream, head)
        middle = time.thread_time()
        handle(stream, chunks)
        stream.close()
        ended = time.thread_time()
        head_cpu += middle - started
        chunks_cpu += ended - middle
    per_chunk = chunks_cpu / repeat / len(chunks) if chunks else 0.0
    return (head_cpu + chunks_cpu) / repeat, per_chunk


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def through_envoy(body_mode: str, tokens: int, requests: int, epp_config: str = "") -> float:
    """EPP CPU seconds per streamed completion of `tokens` tokens, through real Envoy, less
    what the idle EPP spends in the same wall time (scraping the simulators). `epp_config`: the
    EPP's config text (default GIE's default profile)."""
    with tempfile.TemporaryDirectory() as run_dir:
        envoy = EnvoyOptions(listen_port=0, admin_port=0, body_mode=body_mode)
        config = StackConfig(
            run_dir=Path(run_dir),
            sims=2,
            sim_args=["--profile=tiny-test"],
            envoy=envoy,
            epp_config_template=epp_config,
        )
        async with (
            Stack(config) as stack,
            httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client,
        ):
            assert stack.epp is not None and stack.epp.process is not None
            pid = stack.epp.process.pid
            body = {"model": "sim-model", "prompt": "story", "max_tokens": tokens, "stream": True}
            body |= {"ignore_eos": True, "stream_options": {"include_usage": True}}

            async def one() -> None:
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_bytes():
                        pass

            await one()  # warm up
            before, started = process_cpu(pid), time.monotonic()
            for _ in range(requests // 4):
                await asyncio.gather(*(one() for _ in range(4)))
            busy, wall = process_cpu(pid) - before, time.monotonic() - started
            before = process_cpu(pid)
            await asyncio.sleep(wall)
            idle = process_cpu(pid) - before
            return (busy - idle) / (requests // 4 * 4)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1000, help="tokens (chunks) per streamed response")
    parser.add_argument("--requests", type=int, default=200, help="exchanges per mode")
    parser.add_argument("--through-envoy", action="store_true", help="the EPP process behind real Envoy")
    parser.add_argument(
        "--config", type=Path, help="with --through-envoy: the EPP's config (default GIE's default profile)"
    )
    args = parser.parse_args()
    if args.through_envoy:
        epp_config = args.config.read_text() if args.config else ""
        for mode in ("buffered", "full-duplex"):
            cpu = asyncio.run(through_envoy(mode, args.tokens, args.requests, epp_config))
            print(
                f"{mode:12} EPP process: {cpu * 1e3:7.2f} ms CPU per {args.tokens}-token streamed completion"
            )
        return
    make = director()
    buffered = exchange(args.tokens, BUFFERED, STREAMED)
    duplex = exchange(args.tokens, FDS, FDS)
    run(make, buffered, 20)  # warm up
    run(make, duplex, 2)
    per_request, _ = run(make, buffered, args.requests)
    per_response, per_chunk = run(make, duplex, max(args.requests // 10, 5))
    print(f"buffered bootstrap: {per_request * 1e6:8.1f} us CPU per request (chunks skipped)")
    print(f"full duplex:        {per_response * 1e6:8.1f} us CPU per {args.tokens}-token response")
    print(f"                    {per_chunk * 1e6:8.2f} us CPU per response chunk")
    print(f"chunk path / buffered request: {per_chunk / per_request:.3f} per chunk")


if __name__ == "__main__":
    main()
