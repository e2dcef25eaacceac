"""How fast one core absorbs vLLM KV events into the precise prefix index, how much memory the
index takes per million blocks, and what a lookup costs.

100 pods publish in vLLM's wire format (three ZMQ frames, msgpack `EventBatch`): each message
announces one request's newly cached blocks (`BlockStored`, 16-token blocks, chained on the
request's shared system prompt) and, once a pod's cache is full, the blocks it evicted
(`BlockRemoved`), oldest first — the mix a busy engine sends. Messages are encoded beforehand; the
timed part is what the EPP does per message: frame and sequence checks, msgpack decoding, block
keys from the token ids (llm-d's cbor-fnv chain) and the index update. CPU time on one core.

    .venv/bin/python bench/kv_index_bench.py [--pods 100] [--messages 20000] [--capacity 4096] \
        [--zmq] [--redis]

`--zmq` also pushes the same messages through real PUB sockets into the EPP's bound SUB socket
(central mode) and reports the rate the subscriber task keeps up with. `--redis` also runs the
ingestion and the lookups against the Redis index backend (`redisConfig`), on a redis-server this
starts on a free port: both processes' CPU time for the ingestion (and the wall time until every
write was acknowledged), Redis memory per million blocks, and the lookup: its round trip and both
processes' CPU time per call, beside the in-memory figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import time
import tracemalloc
from collections import deque

from prometheus_client import CollectorRegistry

from epp.datalayer.kvblocks import KVBlockIndex, KVBlockIndexBase, KVIndexMetrics, TokenProcessor
from epp.datalayer.kvsubscriber import KVEventIngester
from epp.kvevents import BlockRemoved, BlockStored, KVEvent, encode_batch, prompt_block_hashes

BLOCK = 16
MODEL = "bench-model"


def workload(pods: int, messages: int, capacity: int, seed: int = 0) -> tuple[list[list[bytes]], int, int]:
    """Encoded messages round-robin over the pods; (messages, events, blocks stored)."""
    rng = random.Random(seed)
    systems = [[rng.randrange(128_000) for _ in range(1024)] for _ in range(50)]  # 64-block prompts
    held: list[deque[int]] = [deque() for _ in range(pods)]
    cached: list[set[int]] = [set() for _ in range(pods)]
    seqs = [0] * pods
    out: list[list[bytes]] = []
    events_total = blocks_total = 0
    for n in range(messages):
        pod = n % pods
        prompt = systems[rng.randrange(len(systems))] + [rng.randrange(128_000) for _ in range(512)]
        hashes = prompt_block_hashes(prompt, BLOCK, MODEL)
        new = [i for i, h in enumerate(hashes) if h not in cached[pod]]
        events: list[KVEvent] = []
        if new:
            first = new[0]
            parent = hashes[first - 1] if first else None
            events.append(
                BlockStored(hashes[first:], parent, prompt[first * BLOCK : len(hashes) * BLOCK], None)
            )
            blocks_total += len(hashes) - first
            for h in hashes[first:]:
                if h not in cached[pod]:
                    cached[pod].add(h)
                    held[pod].append(h)
        evicted = []
        while len(held[pod]) > capacity:
            victim = held[pod].popleft()
            cached[pod].discard(victim)
            evicted.append(victim)
        if evicted:
            events.append(BlockRemoved(evicted))
        topic = f"kv@10.0.{pod // 250}.{pod % 250}:8000@{MODEL}".encode()
        out.append([topic, seqs[pod].to_bytes(8, "big"), encode_batch(events, 0.0, BLOCK, {})])
        seqs[pod] += 1
        events_total += len(events)
    return out, events_total, blocks_total


HASH = "cbor-fnv"


def new_ingester(size: int, processor: TokenProcessor | None = None) -> KVEventIngester:
    metrics = KVIndexMetrics(CollectorRegistry())
    processor = processor or TokenProcessor(BLOCK, algorithm=HASH)
    index = KVBlockIndex(processor, size=size, metrics=metrics)
    return KVEventIngester(index, metrics)


def ingest(
    messages: list[list[bytes]], size: int, processor: TokenProcessor | None = None
) -> tuple[float, KVEventIngester]:
    ingester = new_ingester(size, processor)
    gc.collect()
    started = time.process_time()
    for frames in messages:
        ingester.frames(frames)
    return time.process_time() - started, ingester


def memory_per_million(messages: list[list[bytes]]) -> tuple[float, int]:
    """Bytes the index holds per million block keys (stores only, nothing evicted)."""
    stores = list(messages)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ingester = new_ingester(10**9)
    for frames in stores:
        ingester.frames(frames)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    blocks = sum(len(s.blocks) for s in ingester.index._pods.values())
    return (after - before) / blocks * 1e6, blocks


def held_prompt(index: KVBlockIndexBase, tokens: int = 6000) -> list[int]:
    """A prompt that 10 of the pods hold entirely; its block keys."""
    rng = random.Random(1)
    prompt = [rng.randrange(128_000) for _ in range(tokens)]
    hashes = prompt_block_hashes(prompt, BLOCK, "lookup")
    for pod in sorted(index.pods())[:10]:
        index.apply(pod, MODEL, [BlockStored(hashes, None, prompt, None)])
    return prompt


def lookup_cost(ingester: KVEventIngester, rounds: int = 2000) -> tuple[float, float]:
    """(keys, lookup) seconds for a 6,000-token prompt that 10 pods hold entirely: the lookup
    walks all 375 blocks. Keys are memoised after the first computation, as in the EPP."""
    index = ingester.index
    assert isinstance(index, KVBlockIndex)
    names = set(index.pods())
    prompt = held_prompt(index)
    started = time.process_time()
    keys = index.keys_for(prompt, MODEL)
    for _ in range(rounds - 1):
        index.keys_for(prompt, MODEL)
    keyed = (time.process_time() - started) / rounds
    started = time.process_time()
    for _ in range(rounds):
        scores = index.longest_prefix(keys, names)
    assert max(scores.values()) == len(keys)
    return keyed, (time.process_time() - started) / rounds


async def through_zmq(messages: list[list[bytes]], pods: int) -> float:
    import zmq
    import zmq.asyncio

    from epp.datalayer.kvsubscriber import Subscriber

    ingester = new_ingester(10**8)
    subscriber = Subscriber(ingester, "tcp://127.0.0.1:0", bind=True)
    subscriber.start()
    context = zmq.asyncio.Context.instance()
    publishers = []
    for _ in range(pods):
        socket = context.socket(zmq.PUB)
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(subscriber.bound_endpoint)
        publishers.append(socket)
    warm = [b"kv@warm@m", (0).to_bytes(8, "big"), encode_batch([], 0.0, BLOCK, {})]
    while ingester.applied == 0:
        for socket in publishers:
            await socket.send_multipart(warm)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    ingester.sequences = type(ingester.sequences)()
    base = ingester.applied
    started = time.perf_counter()
    for n, frames in enumerate(messages):
        await publishers[n % pods].send_multipart(frames)
    while ingester.applied - base < len(messages) * 0.99:
        await asyncio.sleep(0.01)
        if time.perf_counter() - started > 120:
            break
    elapsed = time.perf_counter() - started
    for socket in publishers:
        socket.close()
    await subscriber.stop()
    return (ingester.applied - base) / elapsed


async def redis_figures(messages: list[list[bytes]], memory_seconds: float, memory_lookup: float) -> None:
    """The same ingestion and lookups through the Redis backend, beside the in-memory figures."""
    from redis import asyncio as aioredis

    from epp.datalayer.kvblocks_redis import RedisKVBlockIndex
    from epp.replicas.local_redis import LocalRedis, free_port

    async with LocalRedis(port=free_port()) as server:
        client = aioredis.from_url(server.url)

        async def redis_cpu() -> float:
            info = await client.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        metrics = KVIndexMetrics(CollectorRegistry())
        index = RedisKVBlockIndex(
            TokenProcessor(BLOCK, algorithm=HASH), server.url, lookup_timeout=5.0, metrics=metrics
        )
        await index.start()
        ingester = KVEventIngester(index, metrics)
        base_memory = int((await client.info("memory"))["used_memory"])
        gc.collect()
        server_cpu, cpu, wall = await redis_cpu(), time.process_time(), time.perf_counter()
        for n, frames in enumerate(messages):
            ingester.frames(frames)
            if n % 64 == 63:
                await asyncio.sleep(0)  # the writer sends while events keep coming, as in the EPP
        await index.flushed(timeout=600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_cpu = await redis_cpu() - server_cpu
        keys = sum(1 for _ in [k async for k in client.scan_iter(match=f"{index.key_prefix}[0-9]*")])
        used = int((await client.info("memory"))["used_memory"]) - base_memory
        print(
            f"redis ingestion (EPP CPU time): {len(messages) / cpu:,.0f} messages/s "
            f"(in memory {len(messages) / memory_seconds:,.0f}); redis-server CPU "
            f"{server_cpu / len(messages) * 1e6:,.0f} µs per message; wall {len(messages) / wall:,.0f} "
            "messages/s until every write was acknowledged"
        )
        print(f"redis memory: {used / keys * 1e6 / 2**20:,.0f} MiB per million block keys ({keys:,} keys)")
        for tokens in (6000, 1024):
            prompt = held_prompt(index, tokens)
            await index.flushed(timeout=60)
            block_keys = index.keys_for(prompt, MODEL)
            rounds = 300
            await index.lookup(block_keys)  # the script loaded
            server_cpu, cpu, wall = await redis_cpu(), time.process_time(), time.perf_counter()
            for _ in range(rounds):
                scores = await index.lookup(block_keys)
            wall, cpu = (time.perf_counter() - wall) / rounds, (time.process_time() - cpu) / rounds
            server_cpu = (await redis_cpu() - server_cpu) / rounds
            assert scores is not None and max(scores.values()) == len(block_keys)
            baseline = f"; in memory {memory_lookup * 1e6:,.0f} µs" if tokens == 6000 else ""
            print(
                f"redis lookup over {len(block_keys)} blocks held by 10 pods: {wall * 1e6:,.0f} µs round "
                f"trip, {cpu * 1e6:,.0f} µs EPP CPU, {server_cpu * 1e6:,.0f} µs redis-server CPU{baseline}"
            )
        await index.stop()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--capacity", type=int, default=4096, help="KV blocks per pod")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--zmq", action="store_true")
    parser.add_argument("--redis", action="store_true", help="also the Redis index backend")
    parser.add_argument("--hash", choices=["cbor-fnv", "xxh64"], default="cbor-fnv", help="hashAlgorithm")
    args = parser.parse_args()
    global HASH
    HASH = args.hash
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    messages, events, blocks = workload(args.pods, args.messages, args.capacity)
    seconds, ingester = ingest(messages, 10**8)
    print(f"{args.pods} pods, {len(messages)} messages, {events} events, {blocks} blocks stored, hash {HASH}")
    print(
        f"ingestion (one core, CPU time): {len(messages) / seconds:,.0f} messages/s, "
        f"{events / seconds:,.0f} events/s, {blocks / seconds:,.0f} blocks/s"
    )
    print(f"index: {len(ingester.index):,} block keys held")
    # In the EPP a routed prompt's keys were computed when it was scored, so the engine's stores of
    # it find them memoised: the same messages again, into a fresh index, with the warm processor.
    warm, _ = ingest(messages, 10**8, ingester.index.processor)
    print(
        f"ingestion of prompts already scored (keys memoised): {len(messages) / warm:,.0f} messages/s, "
        f"{blocks / warm:,.0f} blocks/s"
    )
    per_million, measured = memory_per_million(messages[: min(len(messages), 4000)])
    print(f"memory: {per_million / 2**20:,.0f} MiB per million blocks (measured on {measured:,} blocks)")
    keyed, looked_up = lookup_cost(ingester)
    print(
        f"6,000-token prompt held by 10 of {args.pods} pods: block keys {keyed * 1e6:,.0f} µs (memoised), "
        f"lookup over 375 blocks {looked_up * 1e6:,.0f} µs"
    )
    if args.redis:
        asyncio.run(redis_figures(messages, seconds, looked_up))
    if args.zmq:
        rate = asyncio.run(through_zmq(messages, args.pods))
        print(f"through ZMQ (PUB x {args.pods} -> bound SUB, one event loop): {rate:,.0f} messages/s")


if __name__ == "__main__":
    main()
