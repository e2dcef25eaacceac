"""The wait of a routed, evictable request's stream for its next message or its eviction."""

from __future__ import annotations

import asyncio

from epp.extproc.pb import ext_proc
from epp.extproc.server import _message_or_eviction


class Incoming:
    """A stream's messages that never come; records how its pending read ended."""

    def __init__(self) -> None:
        self.read_cancelled = False

    def __aiter__(self) -> Incoming:
        return self

    async def __anext__(self) -> ext_proc.ProcessingRequest:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.read_cancelled = True
            raise
        raise AssertionError("unreachable")


async def test_a_stream_cancelled_while_it_waits_cancels_its_pending_read() -> None:
    """Envoy resetting the stream cancels the handler's wait: the read it started went on
    without an owner (its outcome never retrieved), holding the ended call."""
    incoming = Incoming()
    eviction: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(_message_or_eviction(incoming, eviction))
    await asyncio.sleep(0)  # the wait begins; the read starts
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await asyncio.sleep(0)  # the read's cancellation is delivered
    assert incoming.read_cancelled


async def test_an_eviction_first_cancels_the_pending_read() -> None:
    incoming = Incoming()
    eviction: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    eviction.set_result(None)
    assert await _message_or_eviction(incoming, eviction) is None
    await asyncio.sleep(0)
    assert incoming.read_cancelled
