"""Publishes the engine's prefix-cache changes as vLLM KV events over ZMQ PUB (the wire format
is `epp.kvevents`).

Like llm-d's simulator the publisher dials the endpoint (an EPP in central mode binds it); an
endpoint with a ``*`` host (vLLM's default ``tcp://*:5557``) is bound instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import zmq
import zmq.asyncio

from epp.kvevents import AllBlocksCleared, KVEvent, encode_batch


class KVEventPublisher:
    """One PUB socket per simulated endpoint."""

    def __init__(self, endpoint: str, block_size: int, lora_ids: Mapping[str, int]) -> None:
        self.endpoint = endpoint
        self.topic = b""
        self._block_size = block_size
        self._lora_ids = dict(lora_ids)
        self._seq = 0
        self._socket: zmq.asyncio.Socket | None = None

    def open(self, topic: str) -> None:
        """Connect (or bind) and publish under ``topic`` from now on."""
        self.topic = topic.encode()
        socket = zmq.asyncio.Context.instance().socket(zmq.PUB)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            if "://*:" in self.endpoint:
                socket.bind(self.endpoint)
            else:
                socket.connect(self.endpoint)
        except zmq.ZMQError:
            socket.close()
            raise
        self._socket = socket

    @property
    def sent(self) -> int:
        """Messages published so far (the next sequence number)."""
        return self._seq

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def publish(self, events: list[KVEvent], timestamp: float) -> None:
        if self._socket is None:
            return
        payload = encode_batch(events, timestamp, self._block_size, self._lora_ids)
        frames = [self.topic, self._seq.to_bytes(8, "big"), payload]
        self._seq += 1
        await self._socket.send_multipart(frames)

    async def announce_empty_cache(self, timestamp: float) -> None:
        """Tell subscribers to forget anything they hold for this pod (a restarted engine)."""
        await self.publish([AllBlocksCleared()], timestamp)
