"""The wait of a routed, evictable request's stream for its next message or its eviction."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

from epp.extproc import server
from epp.extproc.pb import ext_proc
from epp.extproc.server import Evicted, _message_or_eviction


class Incoming:
    """A stream's messages: none comes until the stream ends (`end`), when the pending read
    fails as grpc.aio's does on a reset. Records whether that read was cancelled instead."""

    def __init__(self) -> None:
        self.read_cancelled = False
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> Incoming:
        return self

    async def __anext__(self) -> ext_proc.ProcessingRequest:
        try:
            await self.ended
        except asyncio.CancelledError:
            self.read_cancelled = True
            raise
        raise RuntimeError("the call was reset")

    def end(self) -> None:
        self.ended.set_result(None)


async def left_to_end(incoming: Incoming) -> None:
    """The read left pending is not cancelled (a cancelled read leaks its batch in grpc.aio,
    grpc/grpc#43360): it ends with the stream, and its failure is retrieved, not reported."""
    unretrieved: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context))
    await asyncio.sleep(0)
    assert not incoming.read_cancelled
    assert server._unawaited
    incoming.end()
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    assert not server._unawaited
    assert not incoming.read_cancelled
    assert unretrieved == []


async def test_a_stream_cancelled_while_it_waits_leaves_its_read_to_end_with_the_stream() -> None:
    """Envoy resetting the stream cancels the handler's wait, not the read it started."""
    incoming = Incoming()
    eviction: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(_message_or_eviction(incoming, eviction))
    await asyncio.sleep(0)  # the wait begins; the read starts
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await left_to_end(incoming)


async def test_an_eviction_first_leaves_the_read_to_end_with_the_stream() -> None:
    incoming = Incoming()
    eviction: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    eviction.set_result(None)
    assert await _message_or_eviction(incoming, eviction) is Evicted.FIRST
    await left_to_end(incoming)


async def test_the_streams_end_with_the_eviction_is_the_end_not_an_eviction() -> None:
    """Envoy's half-close and the eviction in the same instant: the request is over."""

    async def ended() -> AsyncIterator[ext_proc.ProcessingRequest]:
        eviction.set_result(None)
        return
        yield

    eviction: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    assert await _message_or_eviction(ended(), eviction) is None
    assert eviction.done()
