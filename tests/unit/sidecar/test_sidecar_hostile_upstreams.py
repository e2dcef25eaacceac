"""P/D requests through an in-process sidecar whose prefiller and decode engine (one stand-in on
127.0.0.1, telling the legs apart by `kv_transfer_params.do_remote_decode`) answer what a broken
or hostile engine could: JSON nested deeper than orjson writes, a reply cut before its length.
The client must get the reply unchanged or a vLLM-shaped error, never aiohttp's plain-text 500."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from aiohttp import web

from epp.sidecar.options import SidecarOptions
from epp.sidecar.server import Sidecar

PROMPT = {"model": "m", "prompt": "hello", "max_tokens": 5}
DEEP = b"[" * 600 + b"]" * 600  # past orjson's 254-level writer, within its 1,024-level reader
USAGE = b'"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":5}}'

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def prefilled(request: web.Request) -> web.StreamResponse:
    return web.json_response({"kv_transfer_params": {"remote_engine_id": "e"}, "usage": {}})


async def decoded(request: web.Request) -> web.StreamResponse:
    return web.json_response({"usage": {"prompt_tokens_details": {"cached_tokens": 5}}})


@dataclass
class Engine:
    prefill: Answer = prefilled
    decode: Answer = decoded
    legs: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        params = orjson.loads(await request.read()).get("kv_transfer_params") or {}
        leg = "prefill" if params.get("do_remote_decode") else "decode"
        self.legs.append(leg)
        return await (self.prefill if leg == "prefill" else self.decode)(request)


@dataclass
class Rig:
    engine: Engine
    engine_port: int
    url: str
    http: aiohttp.ClientSession

    async def post(self) -> aiohttp.ClientResponse:
        headers = {"x-prefiller-host-port": f"127.0.0.1:{self.engine_port}"}
        return await self.http.post(f"{self.url}/v1/completions", json=PROMPT, headers=headers)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    engine = Engine()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", engine.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    engine_port = int(runner.addresses[0][1])
    sidecar = Sidecar(
        SidecarOptions(host="127.0.0.1", port=0, model_server_port=engine_port, ssrf_protection=False)
    )
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(engine, engine_port, f"http://127.0.0.1:{sidecar.port}", http)
    finally:
        await sidecar.stop()
        await runner.cleanup()


def vllm_error(body: bytes, status: int, type_: str) -> str:
    error = orjson.loads(body)
    assert (error["object"], error["type"], error["code"], error["param"]) == ("error", type_, status, None)
    return str(error["message"])


async def test_a_prefill_reply_nested_deeper_than_the_decode_leg_can_carry_is_a_502(rig: Rig) -> None:
    """The prefiller's `kv_transfer_params` go into the decode leg, which orjson cannot write past
    254 levels: this was aiohttp's plain-text 500 ("Server got itself in trouble") and a traceback."""

    async def deep(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"kv_transfer_params":' + DEEP + b"}", content_type="application/json")

    rig.engine.prefill = deep
    async with await rig.post() as response:
        assert response.status == 502
        message = vllm_error(await response.read(), 502, "BadGateway")
    assert message == (
        f"prefiller 127.0.0.1:{rig.engine_port} answered with JSON nested deeper than the decode "
        "leg can carry (254 levels)"
    )
    assert rig.engine.legs == ["prefill"]


async def test_a_decode_reply_nested_too_deep_to_rewrite_is_relayed_unchanged(rig: Rig) -> None:
    """Its `cached_tokens` cannot be corrected (orjson would not write it back): the reply was a
    plain-text 500 instead of the engine's answer."""
    reply = b"{" + USAGE + b',"x":' + DEEP + b"}"

    async def deep(request: web.Request) -> web.StreamResponse:
        return web.Response(body=reply, content_type="application/json")

    rig.engine.decode = deep
    async with await rig.post() as response:
        assert response.status == 200
        assert await response.read() == reply


async def test_a_streamed_event_nested_too_deep_to_rewrite_is_relayed_unchanged(rig: Rig) -> None:
    """The event stream went on with aiohttp's "500 Internal Server Error" page written into it
    and was cut, losing the events after it."""
    events = [b'data: {"a":1}\n\n', b"data: {" + USAGE + b',"x":' + DEEP + b"}\n\n", b"data: [DONE]\n\n"]

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    rig.engine.decode = stream
    async with await rig.post() as response:
        assert response.status == 200
        assert await response.read() == b"".join(events)


async def test_a_decode_reply_cut_before_its_length_is_a_502(rig: Rig) -> None:
    """The reply is read whole to correct its `cached_tokens`, so nothing has reached the client
    yet when the engine drops the connection: a vLLM-shaped 502, not a plain-text 500."""

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "5000"})
        await response.prepare(request)
        await response.write(b"{" + USAGE)
        assert request.transport is not None
        request.transport.close()
        return response

    rig.engine.decode = cut
    async with await rig.post() as response:
        assert response.status == 502
        message = vllm_error(await response.read(), 502, "BadGateway")
    assert message.startswith("the decode engine failed before its reply ended: ")
