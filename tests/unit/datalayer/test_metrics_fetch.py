"""The scraping HTTP client against real servers on 127.0.0.1: body framings, reuse, failures."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from epp.datalayer import fetch
from epp.datalayer.fetch import FetchError, KeepAliveGetter
from epp.stack.processes import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A TCP server whose bytes the test writes by hand, to exercise each HTTP framing."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answering(*responses: bytes, close: bool = False) -> tuple[Handler, list[int]]:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            for response in responses:
                await read_request(reader)
                writer.write(response)
                await writer.drain()
            if close:
                writer.close()
            else:
                await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    return handler, connections


async def test_content_length_responses_reuse_one_connection() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    handler, connections = answering(response, response, response)
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        for _ in range(3):
            assert await getter.get(2) == (200, b"hello")
        getter.close()
    assert len(connections) == 1


async def test_chunked_body_split_across_writes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for piece in (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab",
            b"cd\r",
            b"\n3;x=1\r\nefg\r\n0\r\n\r\n",
        ):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        await reader.read()

    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        assert await getter.get(2) == (200, b"abcdefg")
        getter.close()


async def test_chunked_body_with_trailer_fields() -> None:
    """Trailer fields after the last chunk (RFC 9112 7.1.2) end the body; the next response on
    the connection reads as usual."""
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"
    )
    handler, connections = answering(response, response)
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        assert await getter.get(2) == (200, b"abc")
        assert await getter.get(2) == (200, b"abc")
        getter.close()
    assert len(connections) == 1


async def test_close_delimited_body_and_reconnect() -> None:
    handler, connections = answering(b"HTTP/1.0 200 OK\r\n\r\nbody until close", close=True)
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        assert await getter.get(2) == (200, b"body until close")
        assert await getter.get(2) == (200, b"body until close")
        getter.close()
    assert len(connections) == 2


async def test_status_is_reported() -> None:
    handler, _ = answering(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        assert await getter.get(2) == (503, b"")
        getter.close()


async def test_malformed_and_truncated_responses_raise() -> None:
    handler, _ = answering(b"SMTP ready\r\n\r\n")
    async with raw_server(handler) as port:
        with pytest.raises(FetchError, match="bad status line"):
            await KeepAliveGetter("127.0.0.1", port, "/m").get(2)
    handler, _ = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", close=True)
    async with raw_server(handler) as port:
        with pytest.raises(FetchError, match="connection closed before the response ended"):
            await KeepAliveGetter("127.0.0.1", port, "/m").get(2)


async def test_refused_connection_and_timeout() -> None:
    with pytest.raises(ConnectionRefusedError):
        await KeepAliveGetter("127.0.0.1", free_port(), "/m").get(2)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(silent) as port:
        with pytest.raises(TimeoutError):
            await KeepAliveGetter("127.0.0.1", port, "/m").get(0.05)


async def test_gzip_body_is_decoded_and_a_bad_one_fails() -> None:
    page = b"vllm:num_requests_waiting 3\n"
    packed = gzip.compress(page)
    good = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed
    bad = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc"
    cut = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n" + packed[:20]
    handler, _ = answering(good, bad)
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        assert await getter.get(2) == (200, page)
        with pytest.raises(FetchError, match="bad gzip body"):
            await getter.get(2)
        getter.close()
    handler, _ = answering(cut)
    async with raw_server(handler) as port:
        with pytest.raises(FetchError, match="bad gzip body: truncated"):
            await KeepAliveGetter("127.0.0.1", port, "/metrics").get(2)


async def test_a_gzip_body_that_unpacks_past_its_limit_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's gzip body is held to a limit once unpacked: a few kilobytes that unpack to
    gigabytes (a decompression bomb) fail the scrape instead of exhausting the EPP's memory; a
    body cut short still fails as a bad one."""
    monkeypatch.setattr(fetch, "_MAX_INFLATED", 64 * 1024)
    page = b"vllm:num_requests_waiting 3\n"
    bomb = gzip.compress(b"\n" * (fetch._MAX_INFLATED + 1))
    cut = gzip.compress(page * 1000)[:-20]
    for body, error in (
        (bomb, "gzip body inflates past 65536 bytes"),
        (cut, "bad gzip body: truncated"),
        (gzip.compress(page), None),
    ):
        response = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
        handler, _ = answering(response + body)
        async with raw_server(handler) as port:
            getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
            if error is None:
                assert await getter.get(2) == (200, page)
            else:
                with pytest.raises(FetchError, match=error):
                    await getter.get(2)
            getter.close()


async def test_a_decompression_bomb_is_inflated_off_the_event_loop() -> None:
    """A page inflating past the plain body limit (64 MiB) failed only after inflating all of it on
    the event loop, which stalled routing for as long; now the loop's longest stall during that
    scrape is a small part of what inflating the page takes (measured in the same run)."""
    bomb = gzip.compress(b"\n" * (fetch._MAX_BODY + 1))
    started = time.perf_counter()
    zlib.decompressobj(wbits=31).decompress(bomb, fetch._MAX_BODY + 1)
    inline = time.perf_counter() - started
    response = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    handler, _ = answering(response + bomb)
    stalls: list[float] = []

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            stalls.append(loop.time() - before - 0.001)

    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        probing = asyncio.get_running_loop().create_task(probe())
        try:
            await asyncio.sleep(0.005)  # the probe is sleeping when the scrape starts
            with pytest.raises(FetchError, match="gzip body inflates past"):
                await getter.get(30)
            await asyncio.sleep(0.005)  # and has measured the step the answer's handling was in
        finally:
            probing.cancel()
            getter.close()
    assert stalls, "the probe never ran"
    assert max(stalls) < inline / 4, (max(stalls), inline)


async def test_a_scrape_given_up_while_its_page_waits_to_be_inflated_is_not_inflated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one inflating thread is busy: a scrape that times out meanwhile leaves nothing queued
    behind it. Otherwise a backlog longer than the scrape timeout would stay one, every page
    inflated after its scrape gave up, and every gzip endpoint out of rotation for good."""
    inflated: list[int] = []
    real_inflate = fetch._inflate

    def counting(body: bytes) -> bytes:
        inflated.append(len(body))
        return real_inflate(body)

    monkeypatch.setattr(fetch, "_inflate", counting)
    page = gzip.compress(b"vllm:num_requests_waiting 3\n")
    response = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(page)
    handler, _ = answering(response + page, response + page)
    busy = threading.Event()
    blocker = fetch.page_worker().submit(busy.wait, 30)  # the thread, taken
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        try:
            with pytest.raises(TimeoutError):
                await getter.get(0.3)  # answered at once, then waits for the thread
            busy.set()
            await asyncio.wrap_future(blocker)
            assert await getter.get(5) == (200, b"vllm:num_requests_waiting 3\n")  # a new GET is served
        finally:
            busy.set()
            getter.close()
    assert inflated == [len(page)], "the page of the scrape given up was inflated anyway"


async def test_start_calls_back_once_and_close_silences_it() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    handler, connections = answering(response, response)
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        results: list[object] = []
        answered = asyncio.Event()

        def done(result: object) -> None:
            results.append(result)
            answered.set()

        getter.start(done)  # connects first
        await asyncio.wait_for(answered.wait(), 2)
        answered.clear()
        getter.start(done)  # on the open connection
        await asyncio.wait_for(answered.wait(), 2)
        assert results == [(200, b"ok"), (200, b"ok")]
        getter.start(done)  # the server answers no third request
        getter.close()
        await asyncio.sleep(0.05)
        assert len(results) == 2
    assert len(connections) == 1


async def test_a_body_larger_than_the_read_buffer_is_read_whole() -> None:
    body = bytes(range(256)) * 800  # 200 KB: several reads of the 64 KiB buffer
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    handler, connections = answering(response, response)
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        assert await getter.get(2) == (200, body)
        assert await getter.get(2) == (200, body)
        getter.close()
    assert len(connections) == 1


async def test_a_chunk_size_that_is_not_a_hex_number_fails() -> None:
    """A chunk-size line is hex digits (RFC 9112 7.1), optionally with extensions: a signed or
    prefixed size fails the scrape instead of being read as some other length."""
    for size in (b"-3", b"+3", b"0x3", b"3_0", b""):
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabc\r\n0\r\n\r\n"
        handler, _ = answering(response)
        async with raw_server(handler) as port:
            getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
            with pytest.raises(FetchError, match="bad chunk size"):
                await getter.get(2)
            getter.close()


@pytest.mark.parametrize("where", ["chunk size", "trailer"])
async def test_a_chunk_size_or_trailer_line_past_the_header_limit_fails_at_once(where: str) -> None:
    """A chunk-size or trailer line is held to the header limit: one that never ends fails as soon
    as it passes it, rather than growing the buffer (each read scanning all of it again) to the
    64 MiB body limit or the timeout."""
    line = b"X-Padding: " if where == "trailer" else b"1"
    start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    endless = start + (b"0\r\n" if where == "trailer" else b"") + line + b"0" * (2 * fetch._MAX_HEADER)
    handler, _ = answering(endless)
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        with pytest.raises(FetchError, match=f"{where} line too long"):
            await getter.get(2)
        getter.close()


@pytest.mark.parametrize(
    ("header", "parses"),
    [
        (b"Content-Length: %d", 1),  # only the digits change: parsed once
        (b"content-length:\t %d \t", 1),
        (b"Content-Length: 0%d", 1),  # leading zeros: int() reads them as the parse does
        # Not reused: a length the parse reads otherwise, or a second header naming it.
        (b"Content-Length: %d_0", 3),
        (b"Content-Length: %d\r\nX-Content-Length: 9", 3),
        (b"Content-Length: %d\r\nContent-Length : %d", 3),
    ],
)
async def test_answers_whose_headers_differ_only_in_the_content_length_are_parsed_once(
    monkeypatch: pytest.MonkeyPatch, header: bytes, parses: int
) -> None:
    """A busy server's page changes length from one answer to the next, and with it only the
    Content-Length's digits: the headers are not parsed again, and each body is read whole to
    its own length; headers whose length could read otherwise are parsed each time."""
    calls: list[bytes] = []
    parse = fetch._Head.parse

    def counted(head: bytes) -> fetch._Head:
        calls.append(head)
        return parse(head)

    monkeypatch.setattr(fetch._Head, "parse", counted)
    digits = (0, 123, 45)  # "0_0" reads as 0, as "0" does: the rest of the line counts
    scale = 10 if b"_0" in header else 1  # what "N_0" reads as
    bodies = [bytes([97 + i]) * (n * scale) for i, n in enumerate(digits)]

    def response(n: int, body: bytes) -> bytes:
        line = header.replace(b"%d", b"%d" % n)
        return b"HTTP/1.1 200 OK\r\nServer: test\r\n" + line + b"\r\n\r\n" + body

    handler, _ = answering(*(response(n, body) for n, body in zip(digits, bodies, strict=True)))
    async with raw_server(handler) as port:
        getter = KeepAliveGetter("127.0.0.1", port, "/metrics")
        for body in bodies:
            assert await getter.get(2) == (200, body)
        getter.close()
    assert len(calls) == parses
