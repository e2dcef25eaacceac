"""`epp sidecar` as a real process in front of real `epp sim` processes (a decode engine and a
prefill engine), plus small local HTTP servers standing in for broken prefillers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from epp.stack.processes import ManagedProcess, epp_command, free_port, ready_file_probe, wait_until
from tests.integration.helpers import read_sse

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "sim-model"
DECODE_NOT_READY = (
    "The decode node is not ready. Please check that the vLLM service is running and the port "
    "configuration is correct."
)
LONG_PROMPT = "disaggregated serving moves the prompt's KV cache from a prefill pod to a decode pod " * 6


class LocalServer:
    """A local HTTP server counting the requests it gets. `mode`: "answer" with JSON, "hang" (never
    answer), or "cut" (start an event stream, then drop the connection)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "cut":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices": []}\n\n')
            assert request.transport is not None
            request.transport.close()
            return response
        return web.json_response({"reached": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_epp(stack: contextlib.AsyncExitStack, run_dir: Path, name: str, *args: str) -> dict[str, Any]:
    """Start `epp <args> --ready-file ...`, stopped (SIGTERM) when `stack` closes; its ready file."""
    ready = run_dir / f"{name}.ready.json"
    argv = epp_command("--log-level", "DEBUG", *args, "--ready-file", str(ready))
    process = ManagedProcess(name, argv, run_dir / f"{name}.log")
    await process.start()
    stack.push_async_callback(process.stop)
    document: dict[str, Any] = await wait_until(
        ready_file_probe(ready), f"{name} to be ready", timeout=30, watched=[process]
    )
    return document


async def start_sim(stack: contextlib.AsyncExitStack, run_dir: Path, role: str) -> str:
    document = await start_epp(
        stack, run_dir, f"{role}-sim", "sim", "--count=1", "--port=0", "--profile=tiny-test",
        f"--model={MODEL}", f"--role={role}", f"--name-prefix={role}",
    )  # fmt: skip
    endpoint = document["endpoints"][0]
    return f"{endpoint['host']}:{endpoint['port']}"


async def start_sidecar(
    stack: contextlib.AsyncExitStack, run_dir: Path, name: str, engine_port: int, *args: str
) -> str:
    document = await start_epp(
        stack,
        run_dir,
        name,
        "sidecar",
        "--host=127.0.0.1",
        "--port=0",
        f"--model-server-port={engine_port}",
        *args,
    )
    return f"{document['scheme']}://127.0.0.1:{document['port']}"


def port_of(hostport: str) -> int:
    return int(hostport.rpartition(":")[2])


@dataclass
class Rig:
    run_dir: Path
    prefill: str
    decode: str
    dead: str
    hung: LocalServer
    outsider: LocalServer
    sidecar: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """A prefill sim and a decode sim; a sidecar in front of the decode sim whose allowlist (the
    EPP's endpoint file) holds the prefill sim, a hung prefiller and a dead one, but not `outsider`."""
    run_dir = tmp_path_factory.mktemp("sidecar")
    async with contextlib.AsyncExitStack() as stack:
        prefill = await start_sim(stack, run_dir, "prefill")
        decode = await start_sim(stack, run_dir, "decode")
        hung, outsider = LocalServer("hang"), LocalServer("answer")
        for server in (hung, outsider):
            await server.start()
            stack.push_async_callback(server.stop)
        dead = f"127.0.0.1:{free_port()}"
        endpoints = run_dir / "endpoints.yaml"
        endpoints.write_text(
            "endpoints:\n"
            + "".join(
                f"  - {{address: 127.0.0.1, port: {port_of(target)}}}\n"
                for target in (prefill, hung.hostport, dead)
            )
        )
        sidecar = await start_sidecar(
            stack, run_dir, "sidecar", port_of(decode),
            f"--endpoints-file={endpoints}", "--prefill-timeout=300ms", "--prefill-max-retries=1",
            "--prefill-retry-backoff=10ms",
        )  # fmt: skip
        yield Rig(run_dir, prefill, decode, dead, hung, outsider, sidecar)


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def sim_stats(http: aiohttp.ClientSession, hostport: str) -> dict[str, Any]:
    async with http.get(f"http://{hostport}/internal/stats") as response:
        assert response.status == 200
        stats: dict[str, Any] = await response.json()
        return stats


def delta(after: dict[str, Any], before: dict[str, Any], *keys: str) -> tuple[int, ...]:
    return tuple(after[key] - before[key] for key in keys)


def chat(max_tokens: int, tag: str = "", **extra: Any) -> dict[str, Any]:
    """A chat request; a new `tag` makes a prompt no engine has cached yet (it comes first)."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{tag} {LONG_PROMPT}"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        **extra,
    }


async def test_plain_proxy_serves_the_engine_api(rig: Rig, http: aiohttp.ClientSession) -> None:
    async with http.get(f"http://{rig.decode}/v1/models") as direct:
        expected = await direct.json()
    async with http.get(f"{rig.sidecar}/v1/models") as response:
        assert response.status == 200
        assert response.headers["x-inference-pod"] == "decode-0"
        assert await response.json() == expected
    async with http.get(f"{rig.sidecar}/metrics") as response:
        assert response.status == 200 and "vllm:num_requests_running" in await response.text()
    async with http.get(f"{rig.sidecar}/health") as response:
        assert response.status == 200
    async with http.post(f"{rig.sidecar}/no/such/path", data=b"x") as response:
        assert response.status in (404, 405), "the engine's answer, relayed"
        assert response.headers["x-inference-pod"] == "decode-0"


async def test_plain_streaming_is_relayed(rig: Rig, http: aiohttp.ClientSession) -> None:
    prefill_before, decode_before = await sim_stats(http, rig.prefill), await sim_stats(http, rig.decode)
    body = chat(6, "plain stream", stream=True, stream_options={"include_usage": True})
    async with http.post(f"{rig.sidecar}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        frames = await read_sse(response)
    assert frames[-1] == "[DONE]"
    content = [f["choices"][0]["delta"].get("content") for f in frames[:-1] if f["choices"]]
    assert len([c for c in content if c]) == 6
    decode_after = await sim_stats(http, rig.decode)
    assert delta(decode_after, decode_before, "requests", "remote_decode") == (1, 0)
    assert frames[-2]["usage"]["prompt_tokens_details"]["cached_tokens"] == (
        decode_after["cached_tokens"] - decode_before["cached_tokens"]
    ), "without a prefiller the engine's own figure is untouched"
    assert (await sim_stats(http, rig.prefill))["requests"] == prefill_before["requests"]


async def pd_exchange(
    rig: Rig, http: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> tuple[aiohttp.ClientResponse, Any, dict[str, Any], dict[str, Any]]:
    """One request through the sidecar with the prefiller header; (response, parsed body or SSE
    frames, prefill sim stats delta, decode sim stats delta)."""
    keys = ("requests", "prefill_only", "remote_decode", "generation_tokens", "cached_tokens")
    prefill_before, decode_before = await sim_stats(http, rig.prefill), await sim_stats(http, rig.decode)
    headers = {"x-prefiller-host-port": rig.prefill}
    async with http.post(f"{rig.sidecar}{path}", json=body, headers=headers) as response:
        payload = await read_sse(response) if body.get("stream") else await response.json()
    prefill_after, decode_after = await sim_stats(http, rig.prefill), await sim_stats(http, rig.decode)
    return (
        response,
        payload,
        dict(zip(keys, delta(prefill_after, prefill_before, *keys), strict=True)),
        dict(zip(keys, delta(decode_after, decode_before, *keys), strict=True)),
    )


async def test_pd_non_streaming_chat(rig: Rig, http: aiohttp.ClientSession) -> None:
    # Twice: the first prefill finds nothing cached while the decoder reports the transferred prompt
    # as cached; the second prefill finds the prompt in the prefiller's own cache.
    figures = []
    for _ in range(2):
        body = chat(7, "pd non-stream")
        response, reply, prefill, decode = await pd_exchange(rig, http, "/v1/chat/completions", body)
        assert response.status == 200, reply
        assert response.headers["x-inference-pod"] == "decode-0"
        assert (prefill["requests"], prefill["prefill_only"], prefill["generation_tokens"]) == (1, 1, 1)
        assert (decode["requests"], decode["remote_decode"]) == (1, 1)
        assert reply["usage"]["completion_tokens"] == 7, "the client's max_tokens is restored for decode"
        assert "kv_transfer_params" not in reply
        cached = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached == prefill["cached_tokens"], "the prefiller's figure, not the decoder's"
        figures.append((cached, decode["cached_tokens"]))
    (first, first_decoder), (second, _) = figures
    assert first == 0 < first_decoder
    assert second > 0


async def test_pd_legs_keep_integers_past_64_bits(rig: Rig, http: aiohttp.ClientSession) -> None:
    """The sidecar read 10**20 as orjson's 1e+20 and wrote both legs with `1e20`: the decoder's
    forced tool call then said `1e+20`."""
    parameters = {"type": "object", "properties": {"n": {"const": 10**20}}, "required": ["n"]}
    body = chat(
        40,
        "pd integers",
        ignore_eos=False,
        tools=[{"type": "function", "function": {"name": "f", "parameters": parameters}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        client_field={"id": -(2**70)},
    )
    response, reply, prefill, decode = await pd_exchange(rig, http, "/v1/chat/completions", body)
    assert response.status == 200, reply
    assert (prefill["prefill_only"], decode["remote_decode"]) == (1, 1)
    call = reply["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["arguments"] == '{"n": 100000000000000000000}'


async def test_pd_streaming_chat(rig: Rig, http: aiohttp.ClientSession) -> None:
    body = chat(5, "pd stream", stream=True, stream_options={"include_usage": True})
    response, frames, prefill, decode = await pd_exchange(rig, http, "/v1/chat/completions", body)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Length" not in response.headers
    assert (prefill["prefill_only"], prefill["generation_tokens"]) == (1, 1), "prefill ran non-streaming"
    assert (decode["remote_decode"], decode["generation_tokens"]) == (1, 5)
    assert frames[-1] == "[DONE]"
    assert len([f for f in frames[:-1] if f["choices"] and f["choices"][0]["delta"].get("content")]) == 5
    usage = frames[-2]["usage"]
    assert usage["completion_tokens"] == 5, "stream_options restored: the usage frame is there"
    assert usage["prompt_tokens_details"]["cached_tokens"] == prefill["cached_tokens"] == 0
    assert decode["cached_tokens"] > 0


async def test_pd_completions_and_responses(rig: Rig, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 4, "ignore_eos": True}
    response, reply, prefill, decode = await pd_exchange(rig, http, "/v1/completions", body)
    assert response.status == 200 and reply["usage"]["completion_tokens"] == 4
    assert (prefill["prefill_only"], decode["remote_decode"]) == (1, 1)
    assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] == prefill["cached_tokens"]

    body = {"model": MODEL, "input": LONG_PROMPT + " responses", "max_output_tokens": 3, "ignore_eos": True}
    response, reply, prefill, decode = await pd_exchange(rig, http, "/v1/responses", body)
    assert response.status == 200, reply
    assert (prefill["prefill_only"], prefill["generation_tokens"], decode["remote_decode"]) == (1, 1, 1)
    assert reply["usage"]["output_tokens"] == 3, "max_output_tokens restored for decode"
    assert reply["usage"]["input_tokens_details"]["cached_tokens"] == prefill["cached_tokens"]


async def test_prefiller_error_is_passed_through(rig: Rig, http: aiohttp.ClientSession) -> None:
    body = {**chat(3), "model": "no-such-model"}
    response, reply, _, decode = await pd_exchange(rig, http, "/v1/chat/completions", body)
    assert response.status == 404
    assert response.headers["x-inference-pod"] == "prefill-0", "the prefiller's own reply"
    assert reply["object"] == "error" and "no-such-model" in reply["message"]
    assert decode["requests"] == 0


async def test_bad_json_is_400(rig: Rig, http: aiohttp.ClientSession) -> None:
    headers = {"x-prefiller-host-port": rig.prefill, "Content-Type": "application/json"}
    async with http.post(f"{rig.sidecar}/v1/completions", data=b'{"model": ', headers=headers) as response:
        assert response.status == 400
        error = await response.json()
    assert (error["object"], error["type"], error["code"], error["param"]) == (
        "error",
        "BadRequestError",
        400,
        None,
    )


@pytest.mark.parametrize("target", ["outsider", "decode"])
async def test_prefiller_outside_the_pool_is_refused(
    rig: Rig, http: aiohttp.ClientSession, target: str
) -> None:
    """The outsider is on an allowed host (127.0.0.1) at a port the pool does not have: llm-d's
    host-only check would let it through. So is the decode engine's own port."""
    hostport = rig.outsider.hostport if target == "outsider" else rig.decode
    prefill_before, decode_before = await sim_stats(http, rig.prefill), await sim_stats(http, rig.decode)
    headers = {"x-prefiller-host-port": hostport}
    async with http.post(f"{rig.sidecar}/v1/chat/completions", json=chat(3), headers=headers) as response:
        assert response.status == 403
        error = await response.json()
    assert error == {
        "object": "error",
        "message": "Forbidden: prefill target not allowed by SSRF protection",
        "type": "Forbidden",
        "param": None,
        "code": 403,
    }
    assert rig.outsider.requests == 0
    assert (await sim_stats(http, rig.prefill))["requests"] == prefill_before["requests"]
    assert (await sim_stats(http, rig.decode))["requests"] == decode_before["requests"]


async def test_dead_prefiller_is_502(rig: Rig, http: aiohttp.ClientSession) -> None:
    decode_before = await sim_stats(http, rig.decode)
    headers = {"x-prefiller-host-port": rig.dead}
    async with http.post(f"{rig.sidecar}/v1/completions", json=chat(3), headers=headers) as response:
        assert response.status == 502
        error = await response.json()
    assert error["type"] == "BadGateway" and rig.dead in error["message"]
    assert (await sim_stats(http, rig.decode))["requests"] == decode_before["requests"]


async def test_hung_prefiller_is_504_after_each_bounded_attempt(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    before = rig.hung.requests
    headers = {"x-prefiller-host-port": rig.hung.hostport}
    async with http.post(f"{rig.sidecar}/v1/chat/completions", json=chat(3), headers=headers) as response:
        assert response.status == 504
        error = await response.json()
    assert error["type"] == "GatewayTimeout" and rig.hung.hostport in error["message"]
    assert rig.hung.requests - before == 2, "one attempt and --prefill-max-retries=1"


async def test_client_disconnect_cancels_the_engine_request(rig: Rig, http: aiohttp.ClientSession) -> None:
    before = await sim_stats(http, rig.decode)
    body = {"model": MODEL, "prompt": "count slowly", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    async with http.post(f"{rig.sidecar}/v1/completions", json=body) as response:
        assert response.status == 200
        await response.content.readline()
        response.close()

    async def aborted() -> bool | None:
        return (await sim_stats(http, rig.decode))["aborted"] > before["aborted"] or None

    await wait_until(aborted, "the decode engine to abort the abandoned request", timeout=30)


async def test_engine_down_is_503_with_llm_d_message(rig: Rig, http: aiohttp.ClientSession) -> None:
    async with contextlib.AsyncExitStack() as stack:
        sidecar = await start_sidecar(
            stack, rig.run_dir, "no-engine", free_port(), "--no-enable-ssrf-protection"
        )
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/health")):
            async with http.request(method, f"{sidecar}{path}", json=chat(2)) as response:
                assert response.status == 503, path
                error = await response.json()
            assert (error["message"], error["type"], error["code"]) == (
                DECODE_NOT_READY,
                "ServiceUnavailable",
                503,
            )


async def test_engine_failing_mid_stream_cuts_the_client_connection(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    """Never a clean end of stream the client would take for a complete reply."""
    engine = LocalServer("cut")
    await engine.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(engine.stop)
        sidecar = await start_sidecar(
            stack, rig.run_dir, "cut-engine", engine.port, "--no-enable-ssrf-protection"
        )
        async with http.post(f"{sidecar}/v1/completions", json={"stream": True}) as response:
            assert response.status == 200
            assert await response.content.readline() == b'data: {"choices": []}\n'
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()


async def test_tls_listener_and_tls_upstream(rig: Rig, http: aiohttp.ClientSession) -> None:
    """client -(http)-> sidecar B -(https, unverified)-> sidecar A (self-signed) -(http)-> decode sim."""
    async with contextlib.AsyncExitStack() as stack:
        secure = await start_sidecar(
            stack, rig.run_dir, "secure", port_of(rig.decode), "--secure-proxy", "--no-enable-ssrf-protection"
        )
        assert secure.startswith("https://")
        async with http.get(f"{secure}/v1/models", ssl=False) as response:
            assert response.status == 200 and response.headers["x-inference-pod"] == "decode-0"
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{secure}/v1/models")
        front = await start_sidecar(
            stack, rig.run_dir, "tls-client", port_of(secure),
            "--enable-tls=decoder", "--tls-insecure-skip-verify=decoder", "--no-enable-ssrf-protection",
        )  # fmt: skip
        async with http.get(f"{front}/v1/models") as response:
            assert response.status == 200 and response.headers["x-inference-pod"] == "decode-0"


async def test_sglang_sends_both_legs_at_once(rig: Rig, http: aiohttp.ClientSession) -> None:
    prefill_before = await sim_stats(http, rig.prefill)
    async with contextlib.AsyncExitStack() as stack:
        sidecar = await start_sidecar(
            stack,
            rig.run_dir,
            "sglang",
            port_of(rig.decode),
            "--kv-connector=sglang",
            "--no-enable-ssrf-protection",
        )
        headers = {"x-prefiller-host-port": rig.prefill}
        async with http.post(f"{sidecar}/v1/chat/completions", json=chat(2), headers=headers) as response:
            assert response.status == 200
            assert response.headers["x-inference-pod"] == "decode-0"
            assert (await response.json())["usage"]["completion_tokens"] == 2

        async def prefill_reached() -> bool | None:
            return (await sim_stats(http, rig.prefill))["requests"] > prefill_before["requests"] or None

        await wait_until(prefill_reached, "the detached prefill leg to reach the prefiller", timeout=30)


async def test_sigterm_lets_a_running_stream_finish(rig: Rig, http: aiohttp.ClientSession) -> None:
    ready = rig.run_dir / "draining.ready.json"
    argv = epp_command(
        "sidecar", "--host=127.0.0.1", "--port=0", f"--model-server-port={port_of(rig.decode)}",
        "--no-enable-ssrf-protection", f"--ready-file={ready}",
    )  # fmt: skip
    process = ManagedProcess("draining", argv, rig.run_dir / "draining.log")
    await process.start()
    try:
        document = await wait_until(ready_file_probe(ready), "sidecar ready", timeout=30, watched=[process])
        body = {
            "model": MODEL,
            "prompt": "a long answer",
            "max_tokens": 400,
            "ignore_eos": True,
            "stream": True,
        }
        async with http.post(f"http://127.0.0.1:{document['port']}/v1/completions", json=body) as response:
            first = await response.content.readline()
            assert first.startswith(b"data: ")
            assert process.process is not None
            process.process.send_signal(signal.SIGTERM)
            frames = await read_sse(response)
        assert frames[-1] == "[DONE]"
        assert len([f for f in frames[:-1] if f["choices"]]) == 400 - 1, "all but the first token frame"
        assert await process.process.wait() == 0
    finally:
        await process.kill()
