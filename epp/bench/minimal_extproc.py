"""The floor for `epp bench overhead`: a grpc.aio ext_proc server that does nothing but answer.

It answers each message Envoy sends in the buffered bootstrap with the smallest reply that still
routes the request the way the EPP's does: the request headers with an empty reply (Envoy then
sends the body), the body with the EPP's shape (the destination header set, the route cache
cleared, the destination and its fallback group in the `envoy.lb` metadata), the response
headers by removing the served header and stopping Envoy sending the body (the EPP's mode
override). Endpoints are taken round robin from the EPP's endpoints file; every reply is built
once at startup. Same TLS and `--event-loop` flags as `epp serve`, so Envoy's connection to it is
the EPP's. Run as `python -m epp.bench.minimal_extproc --endpoints-file F --ready-file R [TLS flags]`.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import yaml

from epp import eventloop, tls
from epp.datastore.endpoint import fallback_group
from epp.extproc.pb import BodyMode, HeaderMode, core, ext_proc, ext_proc_grpc, processing_mode
from epp.extproc.server import bind
from epp.headers import DESTINATION_HEADER, FALLBACK_GROUP_KEY, LB_NAMESPACE, SERVED_KEY
from epp.readyfile import write_ready_file
from epp.signals import stop_event


def routed_reply(destination: str, group: str) -> ext_proc.ProcessingResponse:
    reply = ext_proc.ProcessingResponse()
    common = reply.request_body.response
    common.clear_route_cache = True
    option = common.header_mutation.set_headers.add()
    option.header.key = DESTINATION_HEADER
    option.header.raw_value = destination.encode()
    option.append_action = core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    lb = reply.dynamic_metadata.get_or_create_struct(LB_NAMESPACE)
    lb[DESTINATION_HEADER] = destination
    lb[FALLBACK_GROUP_KEY] = group
    return reply


def response_headers_reply() -> ext_proc.ProcessingResponse:
    reply = ext_proc.ProcessingResponse()
    reply.response_headers.response.header_mutation.remove_headers.append(SERVED_KEY)
    reply.mode_override.CopyFrom(
        processing_mode.ProcessingMode(
            response_body_mode=BodyMode.NONE, response_trailer_mode=HeaderMode.SKIP
        )
    )
    return reply


class MinimalProcessor(ext_proc_grpc.ExternalProcessorServicer):
    def __init__(self, destinations: list[tuple[str, str]]) -> None:
        self._routed = itertools.cycle([routed_reply(d, group) for d, group in destinations])
        self._headers = ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse())
        self._response_headers = response_headers_reply()
        self._body = ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())

    async def Process(
        self,
        request_iterator: AsyncIterator[ext_proc.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        async for message in request_iterator:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                yield next(self._routed) if message.request_headers.end_of_stream else self._headers
            elif kind == "request_body":
                yield next(self._routed)
            elif kind == "response_headers":
                yield self._response_headers
                if message.response_headers.end_of_stream:
                    return
            elif kind == "response_body":
                yield self._body
                if message.response_body.end_of_stream:
                    return
            else:
                raise ValueError(f"the buffered bootstrap never sends {kind}")


def destinations(endpoints_file: Path) -> list[tuple[str, str]]:
    """Each endpoint's host:port and fallback group (as the EPP sets them)."""
    entries = yaml.safe_load(endpoints_file.read_text())["endpoints"]
    return [
        (f"{entry['address']}:{entry['port']}", fallback_group(frozenset(entry.get("models") or ()), None))
        for entry in entries
    ]


async def serve(args: argparse.Namespace) -> None:
    server = grpc.aio.server()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(
        MinimalProcessor(destinations(args.endpoints_file)), server
    )
    address = f"{args.host}:{args.grpc_port}"
    credentials = tls.server_credentials(tls.options_from_args(args))
    port = bind(server, address, credentials)
    stop = stop_event()
    await server.start()
    write_ready_file(args.ready_file, {"grpc_port": port})
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--endpoints-file", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    tls.add_arguments(parser)
    eventloop.add_argument(parser)
    args = parser.parse_args()
    eventloop.run(serve(args), args.event_loop)


if __name__ == "__main__":
    main()
