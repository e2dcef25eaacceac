"""A keep-alive HTTP/1.1 GET client for scraping, one connection per endpoint.

Why not aiohttp's client: at GIE's 50 ms interval, 100 endpoints mean 2,000 scrapes a second.
aiohttp's client alone, reading a 27 KB page without parsing it, costs about 120 us of CPU a
scrape; a whole scrape with this client, parsing included, about 40 (bench/scrape_cost.py). It
does only what scraping needs: one GET at a time on a persistent connection; Content-Length,
chunked or close-delimited bodies, gzip-encoded if the server sends it so (inflated in a worker
thread, to a lower limit than a plain body: see `_MAX_INFLATED`); optional TLS. A GET is
started with a callback (`KeepAliveGetter.start`) so that one scheduler can drive every
connection without a task, a future and a timer per scrape; `get` wraps that in a future for
one-off use."""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, cast

from epp.datastore.endpoint import join_host_port

_HEADER_END = b"\r\n\r\n"
_MAX_HEADER = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
# A gzip body's limit once inflated. A few kilobytes can inflate to the plain limit (64 MiB cost
# 0.4-1.4 s of CPU here), so the inflating runs in a worker thread (zlib releases the GIL), and
# to 4 MiB: more than ten times the largest real metrics page (a vLLM page is 10-300 KB). A page
# under it but past the scraper's OFF_LOOP_PAGE_BYTES is read in the same thread (scraper.py).
_MAX_INFLATED = 4 * 1024 * 1024
_READ_SIZE = 64 * 1024
_thread = threading.local()
_page_pool: ThreadPoolExecutor | None = None

Result = tuple[int, bytes] | BaseException
"""(status, body) of one GET, or what went wrong."""
Done = Callable[[Result], None]


def _read_buffer() -> tuple[bytearray, memoryview]:
    """This thread's read buffer (created on first use)."""
    buffer: tuple[bytearray, memoryview] | None = getattr(_thread, "read_buffer", None)
    if buffer is None:
        array = bytearray(_READ_SIZE)
        buffer = _thread.read_buffer = (array, memoryview(array))
    return buffer


class FetchError(Exception):
    """The response was malformed or the connection failed mid-response."""


class _Head(NamedTuple):
    """What a response's status line and headers say about reading it."""

    status: int
    length: int | None
    chunked: bool
    close: bool
    gzip: bool

    @classmethod
    def parse(cls, head: bytes) -> _Head:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise FetchError(f"bad status line {lines[0][:80]!r}")
        length: int | None = None
        chunked = gzip = False
        close = parts[0] == "HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
            elif name == "content-encoding" and value in ("gzip", "x-gzip"):
                gzip = True
        if length is not None and length > _MAX_BODY:
            raise FetchError("response body too large")
        until_close = not chunked and length is None
        return cls(int(parts[1]), length, chunked, close or until_close, gzip)


_CONTENT_LENGTH = b"\r\ncontent-length:"
_new = tuple.__new__
_LENGTH_DIGITS = 20  # more digits than a body's length can have: parsed (and refused) in full


class _LastHead(NamedTuple):
    """The last response headers parsed on a connection, and what comes before and after their
    Content-Length's digits (`prefix` empty: no single such header, always parsed)."""

    raw: bytes
    head: _Head
    prefix: bytes
    suffix: bytes

    @classmethod
    def of(cls, raw: bytes, head: _Head) -> _LastHead:
        """`head` parsed from `raw`: headers equal to `raw` but for the digits of its one
        Content-Length header parse as `head` with that length."""
        lowered = raw.lower()
        at = lowered.find(_CONTENT_LENGTH)
        # No other line may name it (the parse takes the last one), however written.
        if head.length is None or at < 0 or lowered.count(_CONTENT_LENGTH[2:]) != 1:
            return cls(raw, head, b"", b"")
        start = at + len(_CONTENT_LENGTH)
        while raw[start : start + 1] in (b" ", b"\t"):
            start += 1
        end = start
        while raw[end : end + 1].isdigit():
            end += 1
        line_end = raw.find(b"\r\n", end)
        rest = raw[end:] if line_end < 0 else raw[end:line_end]
        if end == start or rest.strip(b" \t") or int(raw[start:end]) != head.length:
            return cls(raw, head, b"", b"")
        return cls(raw, head, raw[:start], raw[end:])


class _Gzipped(NamedTuple):
    """A whole response whose body is still to be inflated (off the event loop)."""

    status: int
    body: bytes


def _decoded(head: _Head, body: bytes) -> tuple[int, bytes] | _Gzipped:
    return _Gzipped(head.status, body) if head.gzip else (head.status, body)


def _inflate(body: bytes) -> bytes:
    """The gzip body inflated, up to `_MAX_INFLATED` (run in the worker thread)."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        page = inflater.decompress(body, _MAX_INFLATED + 1)
    except zlib.error as exc:
        raise FetchError(f"bad gzip body: {exc}") from exc
    if len(page) > _MAX_INFLATED:
        raise FetchError(f"gzip body inflates past {_MAX_INFLATED} bytes")
    if not inflater.eof:
        raise FetchError("bad gzip body: truncated")
    return page


def page_worker() -> ThreadPoolExecutor:
    """The thread a page's costly steps run in, off the event loop (inflating a gzip body here,
    reading a large page in the scraper). One for the process: a hostile endpoint's pages queue
    behind each other there instead of taking more cores."""
    global _page_pool
    if _page_pool is None:
        _page_pool = ThreadPoolExecutor(1, thread_name_prefix="epp-pages")
    return _page_pool


def _line_end(data: bytearray, what: str) -> int:
    """Where the line at the start of `data` ends (-1: not yet), held to the header limit: an
    endless line would otherwise grow the buffer, rescanned at each read, to the body limit."""
    end = data.find(b"\r\n", 0, _MAX_HEADER + 2)
    if end < 0 and len(data) > _MAX_HEADER:
        raise FetchError(f"response {what} line too long")
    return end


def _chunk_size(line: bytes) -> int:
    """A chunk-size line's size: hex digits before any extension (`int(_, 16)` alone would also
    take a sign, a `0x` or underscores, and a negative size would be read as a length)."""
    digits = line.split(b";", 1)[0].strip(b" \t")
    if not digits or digits.strip(_HEX_DIGITS):
        raise FetchError(f"bad chunk size {digits[:32]!r}")
    return int(digits, 16)


_HEX_DIGITS = b"0123456789abcdefABCDEF"


class _Response:
    """Incremental parser for one HTTP/1.1 response; `body_start` is where its body begins in
    the connection's buffer."""

    __slots__ = ("_chunk_left", "body", "body_start", "head", "until_close")

    def __init__(self, head: _Head, body_start: int) -> None:
        self.head = head
        self.body = bytearray()
        self.body_start = body_start
        self.until_close = not head.chunked and head.length is None
        self._chunk_left = -1

    def take(self, data: bytearray) -> bool:
        """Consume what belongs to this response from `data` (in place); True once it is whole."""
        if self.head.chunked:
            del data[: self.body_start]
            self.body_start = 0
            complete = self._take_chunked(data)
        elif self.until_close:
            return False  # the body is the buffer at connection close
        else:
            assert self.head.length is not None
            end = self.body_start + self.head.length
            if len(data) < end:
                return False
            self.body = data[self.body_start : end]
            del data[:end]
            return True
        if len(self.body) > _MAX_BODY:
            raise FetchError("response body too large")
        return complete

    def _take_chunked(self, data: bytearray) -> bool:
        while True:
            if self._chunk_left == -1:  # a chunk-size line (-2: the trailer section)
                line_end = _line_end(data, "chunk size")
                if line_end < 0:
                    return False
                size = _chunk_size(bytes(data[:line_end]))
                del data[: line_end + 2]
                self._chunk_left = -2 if size == 0 else size
            if self._chunk_left == -2:
                trailer_end = _line_end(data, "trailer")
                if trailer_end < 0:
                    return False
                del data[: trailer_end + 2]
                if trailer_end == 0:
                    return True
                continue
            take = min(self._chunk_left, len(data))
            self.body += data[:take]
            del data[:take]
            self._chunk_left -= take
            if self._chunk_left:
                return False
            if len(data) < 2:
                self._chunk_left = 0
                return False
            del data[:2]
            self._chunk_left = -1

    def result(self) -> tuple[int, bytes] | _Gzipped:
        return _decoded(self.head, bytes(self.body))


class _GetProtocol(asyncio.BufferedProtocol):
    """Reads into a reused buffer (`recv_into`): a plain Protocol gets a fresh bytes object per
    read, which asyncio allocates at 256 KiB and shrinks, and that allocation alone cost more than
    parsing the page (about 23 us of a 27 KB page's scrape). The buffer is the thread's (one
    event loop's): each read is consumed before the next one starts, so connections share it.
    A whole response in one read, the usual case, has its body copied out once."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._read_array, self._read_view = _read_buffer()
        self._buffer = bytearray()
        self._response: _Response | None = None
        self._done: Done | None = None
        self._inflating: Done | None = None  # whose response is being inflated
        self._inflation: Future[bytes] | None = None  # and the worker thread's job
        self._last_head = _LastHead(b"", _Head(0, None, False, False, False), b"", b"")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not by class under uvloop (its transports subclass none of
        # asyncio's): `create_connection` hands a stream protocol nothing else.
        self.transport = cast(asyncio.Transport, transport)

    def request(self, raw: bytes, done: Done) -> None:
        assert self.transport is not None
        self._done = done
        self._response = None
        self._buffer.clear()
        self.transport.write(raw)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        done = self._done
        if done is None:
            return
        result: Result | _Gzipped | None = None
        try:
            if self._response is None and not self._buffer:
                # The usual case: the whole response in this read, its length known. Its body is
                # copied out once, and handed over here (a Python call less per answer).
                end = self._read_array.find(_HEADER_END, 0, nbytes)
                if end >= 0:
                    head = self._head(bytes(self._read_view[:end]))
                    start, length = end + len(_HEADER_END), head.length
                    if length is not None and not head.chunked and start + length <= nbytes:
                        if head.close:
                            self.abort()
                        body = bytes(self._read_view[start : start + length])
                        result = _Gzipped(head.status, body) if head.gzip else (head.status, body)
            if result is None:
                self._buffer += self._read_view[:nbytes]
                if len(self._buffer) > _MAX_HEADER + _MAX_BODY:  # no length, or an endless chunk line
                    raise FetchError("response too large")
                result = self._advance()
        except (FetchError, ValueError) as exc:
            result = FetchError(str(exc))
            self.abort()
        if type(result) is tuple:  # a plain (status, body)
            self._done = self._response = None
            done(result)
        elif result is not None:
            self._deliver(result)

    def data_received(self, data: bytes | memoryview) -> None:
        """Only TLS transports that do not support buffered reads call this."""
        self._buffer += data
        self.buffer_updated(0)

    def _head(self, raw: bytes) -> _Head:
        """A server sends the same headers response after response but for the Content-Length
        (a busy server's values change length) and a Date header once a second: the last ones
        parsed are kept, and headers that differ from them only in the Content-Length's digits
        are not parsed again (1.9-2.3 us a parse, most answers of a busy server)."""
        last = self._last_head
        if raw == last.raw:
            return last.head
        prefix, suffix = last.prefix, last.suffix
        if prefix and raw.startswith(prefix) and raw.endswith(suffix):
            digits = raw[len(prefix) : len(raw) - len(suffix)]
            # ASCII digits only (bytes.isdigit): the line stays a Content-Length line
            if digits.isdigit() and len(digits) < _LENGTH_DIGITS:
                length = int(digits)
                if length <= _MAX_BODY:
                    _, _, chunked, close, gzip = last.head
                    # tuple.__new__: a NamedTuple's own __new__ and _replace are Python calls
                    head = _new(_Head, (last.head.status, length, chunked, close, gzip))
                    self._last_head = _new(_LastHead, (raw, head, prefix, suffix))
                    return head
        head = _Head.parse(raw)
        self._last_head = _LastHead.of(raw, head)
        return head

    def _advance(self) -> tuple[int, bytes] | _Gzipped | None:
        response = self._response
        if response is None:
            end = self._buffer.find(_HEADER_END)
            if end < 0:
                if len(self._buffer) > _MAX_HEADER:
                    raise FetchError("response headers too large")
                return None
            head = self._head(bytes(self._buffer[:end]))
            response = self._response = _Response(head, end + len(_HEADER_END))
        if not response.take(self._buffer):
            return None
        if response.head.close:
            self.abort()
        return response.result()

    def _deliver(self, result: Result | _Gzipped) -> None:
        done, self._done, self._response = self._done, None, None
        if done is None:
            return
        if not isinstance(result, _Gzipped):
            done(result)
            return
        self._inflating = done
        self._inflation = page_worker().submit(_inflate, result.body)
        inflated = asyncio.wrap_future(self._inflation)
        inflated.add_done_callback(functools.partial(self._inflated, done, result.status))

    def _inflated(self, done: Done, status: int, inflated: asyncio.Future[bytes]) -> None:
        if self._inflating is not done:  # dropped meanwhile
            return
        self._inflating = self._inflation = None
        error = FetchError("gzip inflation cancelled") if inflated.cancelled() else inflated.exception()
        done((status, inflated.result()) if error is None else error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is not None and response.until_close:
            del self._buffer[: response.body_start]
            response.body = self._buffer
            self._deliver(response.result())
        else:
            self._deliver(FetchError(f"connection closed before the response ended: {exc or 'EOF'}"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def drop(self) -> None:
        """Abort without telling the caller (it has given up on this GET). A page still waiting
        for the inflating thread is taken off its queue at once (one being inflated runs to its
        end)."""
        inflation, self._inflation = self._inflation, None
        self._done = self._inflating = None
        if inflation is not None:
            inflation.cancel()
        self.abort()


class KeepAliveGetter:
    """GETs one URL path from one host:port, reusing the connection between calls."""

    def __init__(self, host: str, port: int, path: str, tls: ssl.SSLContext | None = None) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {join_host_port(host, port)}\r\n"
            "Accept: text/plain\r\nUser-Agent: epp-scraper\r\n\r\n"
        ).encode()
        self._protocol: _GetProtocol | None = None
        self._connecting: asyncio.Task[None] | None = None

    def start(self, done: Done) -> None:
        """Begin one GET: at once on an open connection, else after connecting (in a task).
        `done` is called once, from the event loop, with the result, unless `close` comes first.
        Connection errors are OSErrors, malformed responses FetchErrors."""
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            protocol.request(self._request, done)
        else:
            self._connecting = asyncio.get_running_loop().create_task(self._connect_and_request(done))

    async def _connect_and_request(self, done: Done) -> None:
        try:
            _, protocol = await asyncio.get_running_loop().create_connection(
                _GetProtocol, self._host, self._port, ssl=self._tls
            )
        except Exception as exc:  # refused, unresolvable, TLS handshake: a failed GET
            self._connecting = None
            done(exc)
            return
        self._connecting = None
        self._protocol = protocol
        protocol.request(self._request, done)

    async def get(self, timeout: float) -> tuple[int, bytes]:
        """(status, body). A timeout drops the connection (a late answer must not be read as the
        next one)."""
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(result: Result) -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        try:
            async with asyncio.timeout(timeout):
                self.start(done)
                return await future
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection and any GET under way, whose callback will not be called."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._protocol is not None:
            self._protocol.drop()
            self._protocol = None


def insecure_tls_context() -> ssl.SSLContext:
    """GIE scrapes https endpoints with verification off by default (insecureSkipVerify)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
