"""Requests through an in-process sidecar to a local engine stand-in on 127.0.0.1 that records what
reaches it (bodies as sent, never decompressed). The engine serves as the prefiller too."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from epp.sidecar.errors import DECODE_NOT_READY, ProxyError
from epp.sidecar.options import SidecarOptions
from epp.sidecar.server import Sidecar
from epp.sidecar.upstream import upstream_url

MAX_BODY_BYTES = 64 * 1024
PROMPT = {"model": "m", "prompt": "compress me " * 50, "max_tokens": 5}


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Engine:
    """Answers every request with a prefill-style JSON reply and records it."""

    received: list[Received] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.raw_path, request.headers.copy(), await request.read()))
        return web.json_response({"kv_transfer_params": {"remote_engine_id": "e"}, "usage": {}})


@dataclass
class Rig:
    engine: Engine
    port: int
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def prefiller(self) -> dict[str, str]:
        return {"x-prefiller-host-port": f"127.0.0.1:{self.engine.port}"}


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    engine = Engine()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", engine.handle)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    engine.port = int(runner.addresses[0][1])
    options = SidecarOptions(
        host="127.0.0.1",
        port=0,
        model_server_port=engine.port,
        ssrf_protection=False,
        max_body_bytes=MAX_BODY_BYTES,
    )
    sidecar = Sidecar(options)
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(engine, sidecar.port, http)
    finally:
        await sidecar.stop()
        await runner.cleanup()


async def post(
    rig: Rig, body: bytes, encoding: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    sent = {"Content-Type": "application/json", "Content-Encoding": encoding, **(headers or {})}
    async with rig.http.post(f"{rig.url}/v1/completions", data=body, headers=sent) as response:
        return response.status, await response.read()


async def test_plain_proxying_forwards_a_compressed_body_byte_for_byte(rig: Rig) -> None:
    compressed = gzip.compress(orjson.dumps(PROMPT))
    assert (await post(rig, compressed, "gzip"))[0] == 200
    (received,) = rig.engine.received
    assert received.body == compressed
    assert received.headers["Content-Encoding"] == "gzip"
    assert received.headers["Content-Length"] == str(len(compressed))


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes)],
    ids=["gzip", "deflate", "identity"],
)
async def test_pd_legs_carry_the_decoded_body_uncompressed(
    rig: Rig, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    status, _ = await post(rig, compress(orjson.dumps(PROMPT)), encoding, rig.prefiller)
    assert status == 200
    prefill, decode = rig.engine.received
    for leg in (prefill, decode):
        assert "Content-Encoding" not in leg.headers
        assert leg.headers["Content-Length"] == str(len(leg.body))
        assert orjson.loads(leg.body)["prompt"] == PROMPT["prompt"]
    assert orjson.loads(prefill.body)["max_tokens"] == 1
    assert orjson.loads(decode.body)["max_tokens"] == 5


@pytest.mark.parametrize(
    ("body", "encoding", "status"),
    [
        # a few hundred compressed bytes that expand past the limit
        (gzip.compress(b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'), "gzip", 413),
        (b"\x1f\x8b not gzip", "gzip", 400),
        (gzip.compress(orjson.dumps(PROMPT))[:-12], "gzip", 400),
        (orjson.dumps(PROMPT), "br", 415),
    ],
    ids=["expands past the limit", "corrupt", "truncated", "unsupported coding"],
)
async def test_pd_bodies_that_cannot_be_decoded_are_refused(
    rig: Rig, body: bytes, encoding: str, status: int
) -> None:
    answered, reply = await post(rig, body, encoding, rig.prefiller)
    assert answered == status
    error = orjson.loads(reply)
    assert (error["object"], error["code"]) == ("error", status)
    assert rig.engine.received == []


@pytest.mark.parametrize("depth", [255, 1000], ids=["just past orjson's writer", "under its reader's 1,024"])
async def test_a_pd_body_nested_deeper_than_the_legs_can_be_written_is_a_400(rig: Rig, depth: int) -> None:
    """orjson reads 1,024 levels but writes 254: such a body was a 500 ("Server got itself in
    trouble", a traceback in the log) once the prefill leg was serialised."""
    arrays = depth - 1  # the body object is level 1
    body = orjson.dumps(PROMPT)[:-1] + b', "x": ' + b"[" * arrays + b"]" * arrays + b"}"
    answered, reply = await post(rig, body, "identity", rig.prefiller)
    assert answered == 400
    error = orjson.loads(reply)
    assert (error["object"], error["type"], error["code"]) == ("error", "BadRequestError", 400)
    assert error["message"] == (
        "Invalid JSON in the request body: objects and arrays are nested deeper than the limit of 254 levels"
    )
    assert rig.engine.received == []


async def test_a_pd_body_254_levels_deep_is_split_into_legs(rig: Rig) -> None:
    arrays = 253
    body = orjson.dumps(PROMPT)[:-1] + b', "x": ' + b"[" * arrays + b"]" * arrays + b"}"
    assert (await post(rig, body, "identity", rig.prefiller))[0] == 200
    assert len(rig.engine.received) == 2


@pytest.mark.parametrize(
    "continuation",
    [{"previous_response_id": "resp_1"}, {"conversation": "conv_1"}, {"conversation": {"id": "conv_1"}}],
    ids=["previous_response_id", "conversation id", "conversation object"],
)
async def test_a_responses_continuation_is_not_prefilled_remotely(
    rig: Rig, continuation: dict[str, object]
) -> None:
    """A stored response or conversation lives on the engine that answered it (vLLM keeps it in
    process), never on a prefiller: the prefill leg got vLLM's 404 "Response with id ... not
    found", relayed to the client, so every P/D follow-up the EPP chose to prefill remotely failed.
    The request goes to the local engine as sent, which holds the history and prefills it."""
    body = orjson.dumps({"model": "m", "input": "and then?", "max_output_tokens": 5, **continuation})
    headers = {"Content-Type": "application/json", "x-request-id": "client-id", **rig.prefiller}
    async with rig.http.post(f"{rig.url}/v1/responses", data=body, headers=headers) as response:
        assert response.status == 200
    (received,) = rig.engine.received  # no prefill leg
    assert received.body == body
    assert received.headers["x-request-id"] == "client-id"
    assert "x-prefiller-host-port" not in received.headers


async def test_a_legacy_ipv4_spelling_of_the_prefiller_is_a_400_not_a_502(rig: Rig) -> None:
    """`127.1` passed as a DNS name, then aiohttp refused to connect to it: 502 "no reply from
    prefiller", as if the prefiller were down."""
    headers = {"x-prefiller-host-port": f"127.1:{rig.engine.port}"}
    answered, reply = await post(rig, orjson.dumps(PROMPT), "identity", headers)
    assert answered == 400
    assert orjson.loads(reply)["message"] == (
        "invalid x-prefiller-host-port: invalid host '127.1': not a canonical IPv4 address"
    )
    assert rig.engine.received == []


async def test_a_zone_id_with_url_syntax_in_the_prefiller_is_a_400_not_a_500(rig: Rig) -> None:
    """Python's ipaddress takes any text after `%` as a zone id: `[::1%2f@evil.example]` passed,
    then yarl refused the URL built from it, an error no handler caught (500)."""
    headers = {"x-prefiller-host-port": f"[::1%2f@evil.example]:{rig.engine.port}"}
    answered, reply = await post(rig, orjson.dumps(PROMPT), "identity", headers)
    assert answered == 400
    assert orjson.loads(reply)["message"] == (
        "invalid x-prefiller-host-port: invalid host '[::1%2f@evil.example]': a zone id is an "
        "interface name or number"
    )
    assert rig.engine.received == []


async def send_raw(port: int, request: bytes) -> bytes:
    """The status line of the reply to `request`, written to the socket as it is."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return (await reader.readline()).rstrip()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("disaggregated", [False, True], ids=["plain", "P/D"])
async def test_an_absolute_form_target_reaches_the_engine_as_path_and_query(
    rig: Rig, disaggregated: bool
) -> None:
    body = orjson.dumps(PROMPT)
    routing = (
        "".join(f"{name}: {value}\r\n" for name, value in rig.prefiller.items()) if disaggregated else ""
    )
    head = (
        "POST http://gateway.example/v1/completions?trace=1 HTTP/1.1\r\nHost: gateway.example\r\n"
        f"{routing}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    assert await send_raw(rig.port, head.encode() + body) == b"HTTP/1.1 200 OK"
    legs = 2 if disaggregated else 1
    assert [leg.path for leg in rig.engine.received] == ["/v1/completions?trace=1"] * legs


def test_a_target_no_url_can_be_built_from_is_a_400() -> None:
    with pytest.raises(ProxyError) as raised:
        upstream_url("http://127.0.0.1:8200", "*")
    assert raised.value.status == 400 and "'*'" in raised.value.message


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose listener never completes another handshake: its accept queue (backlog 0) is
    full with connections nobody accepts, so the kernel drops new SYNs and connecting times out."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        stack.enter_context(socket.create_connection(("127.0.0.1", port)))  # fills the queue
        for _ in range(2):  # kernels that round the backlog up
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield port


async def test_a_connect_timeout_to_the_engine_is_503_decode_not_ready() -> None:
    with unanswered_port() as port:
        sidecar = Sidecar(
            SidecarOptions(
                host="127.0.0.1", port=0, model_server_port=port, ssrf_protection=False, connect_timeout=0.2
            )
        )
        await sidecar.start()
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{sidecar.port}/v1/models") as response,
            ):
                assert response.status == 503
                error = await response.json()
        finally:
            await sidecar.stop()
    assert (error["message"], error["type"]) == (DECODE_NOT_READY, "ServiceUnavailable")
