"""KV events off ZMQ: sequence checks resynchronise a pod, bad input is counted and skipped, a
flooding publisher neither stops the index nor starves the event loop."""

from __future__ import annotations

import asyncio

import msgpack
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry

from epp.datalayer.kvblocks import KVBlockIndex, KVIndexMetrics, TokenProcessor
from epp.datalayer.kvsubscriber import KVEventIngester, Subscriber
from epp.kvevents import BlockStored, encode_batch, prompt_block_hashes

POD = "10.0.0.1:8000"
TOPIC = f"kv@{POD}@m".encode()


def ingester(known: set[str] | None = None) -> KVEventIngester:
    metrics = KVIndexMetrics(CollectorRegistry())
    idx = KVBlockIndex(TokenProcessor(16), metrics=metrics)
    return KVEventIngester(idx, metrics, None if known is None else known.__contains__)


def store(n: int) -> bytes:
    tokens = list(range(n * 100, n * 100 + 32))
    return encode_batch(
        [BlockStored(prompt_block_hashes(tokens, 16, f"e{n}"), None, tokens, None)], 0.0, 16, {}
    )


def frames(seq: int, payload: bytes, topic: bytes = TOPIC) -> list[bytes]:
    return [topic, seq.to_bytes(8, "big"), payload]


def count(metric: object, *labels: str) -> float:
    return metric.labels(*labels)._value.get()  # type: ignore[attr-defined, no-any-return]


def test_a_gap_or_a_restart_drops_the_pod_and_is_counted() -> None:
    ing = ingester()
    ing.frames(frames(5, store(0)))
    assert len(ing.index) == 2
    ing.frames(frames(6, store(1)))
    assert len(ing.index) == 4
    ing.frames(frames(9, store(2)))  # 7 and 8 were lost
    assert len(ing.index) == 2 and count(ing.metrics.resyncs, "gap") == 1
    ing.frames(frames(0, store(3)))  # the publisher restarted
    assert len(ing.index) == 2 and count(ing.metrics.resyncs, "publisher_restart") == 1


def test_bad_input_is_counted_and_skipped() -> None:
    ing = ingester(known={POD})
    ing.frames([TOPIC, b"\x00" * 8])  # two frames
    ing.frames([TOPIC, b"\x01", store(0)])  # short sequence
    ing.frames([b"\xff\xfe", b"\x00" * 8, store(0)])  # topic not UTF-8
    ing.frames(frames(1, b"\xc1garbage"))
    ing.frames(frames(2, msgpack.packb([0.0, [["NewEvent"], ["BlockRemoved", [1], "GPU"]]])))
    ing.frames(frames(3, store(0), topic=b"kv@10.9.9.9:8000@m"))  # not in the pool
    m = ing.metrics.dropped
    assert count(m, "malformed_frames") == 2 and count(m, "malformed_topic") == 1
    assert count(m, "malformed_message") == 1 and count(m, "unknown_or_malformed_event") == 1
    assert count(m, "unknown_pod") == 1
    ing.frames(frames(4, store(0)))
    assert len(ing.index) == 2  # still ingesting


def test_a_token_id_past_32_bits_skips_its_event_not_the_rest_of_the_batch() -> None:
    """vLLM's token ids are 32-bit and the index hashes them as such: one past 2**32 - 1 passed the
    decoder (it checked 64 bits), then raised while its blocks were keyed, ending the whole batch
    (the next event was lost) and logging a traceback per message as an `apply_error`."""
    ing = ingester(known={POD})
    tokens = list(range(32))
    bad = ["BlockStored", [11, 12], None, [2**32, *tokens[1:]], 16, None, "GPU", None]
    good = ["BlockStored", prompt_block_hashes(tokens, 16, "e"), None, tokens, 16, None, "GPU", None]
    ing.frames(frames(1, msgpack.packb([0.0, [bad, good]])))
    assert count(ing.metrics.dropped, "unknown_or_malformed_event") == 1
    assert len(ing.index) == 2  # the good event's two blocks


async def test_central_mode_reads_a_flood_without_starving_the_loop() -> None:
    ing = ingester()
    subscriber = Subscriber(ing, "tcp://127.0.0.1:0", bind=True)
    subscriber.start()
    publisher = zmq.asyncio.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.setsockopt(zmq.SNDHWM, 0)
    publisher.connect(subscriber.bound_endpoint)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.create_task(ticker())
    try:
        seq = 0
        for _ in range(400):  # until the subscription is up (ZMQ's slow joiner)
            await publisher.send_multipart(frames(seq, store(seq)))
            seq += 1
            if ing.applied:
                break
            await asyncio.sleep(0.01)
        assert ing.applied
        payload = store(7)
        for _ in range(5000):
            await publisher.send_multipart(frames(seq, payload))
            seq += 1
        for _ in range(500):
            if ing.sequences._last.get(POD) == seq - 1:
                break
            await asyncio.sleep(0.01)
        assert ing.sequences._last.get(POD) == seq - 1
        assert ticks > 50  # the loop kept running other tasks meanwhile
    finally:
        stop.set()
        await tick_task
        publisher.close()
        await subscriber.stop()


async def test_per_pod_mode_names_the_pod_by_its_endpoint() -> None:
    publisher = zmq.asyncio.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    port = publisher.bind_to_random_port("tcp://127.0.0.1")
    ing = ingester()
    subscriber = Subscriber(ing, f"tcp://127.0.0.1:{port}", bind=False, pod_override="pod-a:1")
    subscriber.start()
    try:
        for seq in range(400):
            await publisher.send_multipart(frames(seq, store(seq), topic=b"kv@whatever@m"))
            if ing.applied:
                break
            await asyncio.sleep(0.01)
        assert ing.index.pods() == ["pod-a:1"]
    finally:
        publisher.close()
        await subscriber.stop()


def test_ipv6_topics_name_the_bracketed_endpoint() -> None:
    ing = ingester(known={"[fd00::1]:8000"})
    ing.frames(frames(0, store(0), topic=b"kv@fd00::1:8000@m"))
    assert ing.index.pods() == ["[fd00::1]:8000"]
