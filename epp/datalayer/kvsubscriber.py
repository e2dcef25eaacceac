"""Reading vLLM's KV events off ZMQ into the KV-block index, on the event loop (pyzmq's asyncio
sockets: a receive never blocks the loop).

Two modes, as llm-d's: **central** — the EPP binds one SUB socket (`zmqEndpoint`) and every engine
connects its PUB socket to it; the pod is named by the topic `kv@<ip:port>@<model>`. **Per pod** —
the EPP connects one SUB socket to each pool endpoint's publisher, `tcp://<ip>:<socketPort>`; the
pod is the endpoint itself, whatever the topic says.

Each message is `[topic, seq (8 bytes big-endian), msgpack EventBatch]`. Per pod the sequence must
grow by one: a gap (messages lost, e.g. to the high-water mark) or a decrease (the publisher
restarted) drops that pod's blocks — the index then relearns them from the next stores — and is
counted; with the index in Redis a gap drops only this replica's view (`lost_events`). Malformed
messages and events, and events from pods outside the pool, are counted and skipped. A flooding
publisher cannot starve the loop: the reader yields after every batch of `YIELD_EVERY` messages,
and ZMQ drops what exceeds the receive high-water mark (seen as a gap).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from epp.datalayer.kvblocks import KVBlockIndexBase, KVIndexMetrics
from epp.kvevents import KVEventError, decode_batch, parse_topic
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

YIELD_EVERY = 64
RECEIVE_HWM = 10_000


@dataclass(frozen=True, slots=True)
class Message:
    pod: str
    model: str
    seq: int
    payload: bytes


class SequenceTracker:
    """Per-pod sequence checks: returns the reason to resynchronise a pod, or None."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def check(self, pod: str, seq: int) -> str | None:
        last = self._last.get(pod)
        self._last[pod] = seq
        if last is None or seq == last + 1:
            return None
        return "gap" if seq > last else "publisher_restart"

    def forget(self, pod: str) -> None:
        self._last.pop(pod, None)


class KVEventIngester:
    """Decodes messages and applies them to the index, with the sequence and pool checks."""

    def __init__(
        self,
        index: KVBlockIndexBase,
        metrics: KVIndexMetrics,
        known_pod: Callable[[str], bool] | None = None,
    ) -> None:
        self.index = index
        self.metrics = metrics
        self.known_pod = known_pod
        self.sequences = SequenceTracker()
        self.applied = 0  # messages applied (for tests and the ingestion benchmark)

    def frames(self, frames: list[bytes], pod_override: str | None = None) -> None:
        """One ZMQ message. Never raises for bad input: it is counted and dropped."""
        if len(frames) != 3 or len(frames[1]) < 8:
            self.metrics.dropped.labels("malformed_frames").inc()
            return
        try:
            pod, model = parse_topic(frames[0].decode())
        except UnicodeDecodeError:
            self.metrics.dropped.labels("malformed_topic").inc()
            return
        if pod_override is not None:
            pod = pod_override
        elif pod.count(":") > 1 and not pod.startswith("["):
            # llm-d writes IPv6 pod ids unbracketed (`kv@fd00::1:8000@m`); endpoints are bracketed.
            host, _, port = pod.rpartition(":")
            pod = f"[{host}]:{port}"
        seq = int.from_bytes(frames[1][-8:], "big")
        self.message(Message(pod, model, seq, frames[2]))

    def message(self, message: Message) -> None:
        pod = message.pod
        if self.known_pod is not None and not self.known_pod(pod):
            self.metrics.dropped.labels("unknown_pod").inc()
            return
        self.metrics.messages.labels(pod).inc()
        reason = self.sequences.check(pod, message.seq)
        if reason is not None:
            self.metrics.resyncs.labels(reason).inc()
            log.info(
                "KV events from %s: %s (seq %d); dropping its blocks to resync", pod, reason, message.seq
            )
            if reason == "gap":
                self.index.lost_events(pod)
            else:  # the engine restarted: its cache is gone
                self.index.clear_pod(pod)
        try:
            batch = decode_batch(message.payload)
        except KVEventError as exc:
            self.metrics.dropped.labels("malformed_message").inc()
            log.debug("KV events from %s: %s", pod, exc)
            return
        if batch.skipped:
            self.metrics.dropped.labels("unknown_or_malformed_event").inc(batch.skipped)
        self.index.apply(pod, message.model, batch.events)
        self.applied += 1

    def pod_removed(self, pod: str) -> None:
        self.sequences.forget(pod)
        self.index.clear_pod(pod)


class Subscriber:
    """One SUB socket read by one task: bound (central mode) or connected to one publisher."""

    def __init__(
        self,
        ingester: KVEventIngester,
        endpoint: str,
        bind: bool,
        topic_filter: str = "kv@",
        pod_override: str | None = None,
    ) -> None:
        self.ingester = ingester
        self.endpoint = endpoint
        self.bind = bind
        self.topic_filter = topic_filter
        self.pod_override = pod_override
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.bound_endpoint = ""  # the endpoint actually bound (a port 0 or * resolved)

    def start(self) -> None:
        socket = zmq.asyncio.Context.instance().socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        socket.setsockopt(zmq.SUBSCRIBE, self.topic_filter.encode())
        label = self.pod_override or self.endpoint
        try:
            if self.bind:
                socket.bind(self.endpoint)
                self.bound_endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                socket.connect(self.endpoint)
        except zmq.ZMQError:
            self.ingester.metrics.zmq_errors.labels(label, "bind" if self.bind else "connect").inc()
            socket.close()
            raise
        self._socket = socket
        self._task = asyncio.get_running_loop().create_task(
            self._run(socket, label), name=f"kv-events {label}"
        )
        self.ingester.metrics.subscribers.inc()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
            self.ingester.metrics.subscribers.dec()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _run(self, socket: zmq.asyncio.Socket, label: str) -> None:
        ingester = self.ingester
        while True:
            try:
                frames = await socket.recv_multipart()
            except zmq.ZMQError:
                ingester.metrics.zmq_errors.labels(label, "recv").inc()
                await asyncio.sleep(0.1)
                continue
            self._apply(frames, label)
            # Drain what is already queued without awaiting the loop for each message, then yield.
            for _ in range(YIELD_EVERY - 1):
                try:
                    frames = _now(socket.recv_multipart(flags=zmq.NOBLOCK))
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    ingester.metrics.zmq_errors.labels(label, "recv").inc()
                    break
                self._apply(frames, label)
            await asyncio.sleep(0)

    def _apply(self, frames: list[bytes], label: str) -> None:
        """One message; a bug in applying it is logged and counted, never the reader's end."""
        try:
            self.ingester.frames(frames, self.pod_override)
        except Exception:
            log.exception("KV events from %s: failed to apply a message; skipped", label)
            self.ingester.metrics.dropped.labels("apply_error").inc()


def _now(pending: Any) -> list[bytes]:
    """The result of a non-blocking receive, which pyzmq's asyncio socket resolves at once
    (raising zmq.Again when nothing is queued)."""
    frames: list[bytes] = pending.result()
    return frames
