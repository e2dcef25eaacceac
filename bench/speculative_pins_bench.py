"""What the precise index's per-request speculative work costs at `epp bench scale`'s shape: 1,000
pods, each holding one group's 62-block system prompt among ~600 other keys; requests in random
group order, each 62 shared keys and 6 of its own, about ten in flight per group. Per request:
the lookup (with `expire`), the pin on the pod, and, for the request ten behind it in its group,
the KV event confirming its own keys and its release. Thread CPU per operation, with the cyclic
garbage collector off as in the virtual run; in random group order a pod's entries have left the
CPU cache since its last request, as in the run.

    .venv/bin/python bench/speculative_pins_bench.py [--requests 50000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time

from epp.datalayer.kvblocks import KVBlockIndex, TokenProcessor

GROUPS = 1000
SHARED = 62
OWN = 6
IN_FLIGHT = 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    gc.disable()
    rng = random.Random(1)
    index = KVBlockIndex(TokenProcessor(16), confirmation_ends_speculation=True)
    pods = [f"10.0.{n // 250}.{n % 250}:8000" for n in range(GROUPS)]
    prefixes = [[rng.getrandbits(64) for _ in range(SHARED)] for _ in range(GROUPS)]
    for pod, prefix in zip(pods, prefixes, strict=True):
        index._hold(prefix, pod, 1.0)
        index._hold([rng.getrandbits(64) for _ in range(600)], pod, 1.0)
    requests = []
    for _ in range(args.requests):
        group = rng.randrange(GROUPS)
        requests.append((group, prefixes[group] + [rng.getrandbits(64) for _ in range(OWN)]))
    in_flight: list[list[list[int]]] = [[] for _ in range(GROUPS)]
    lookup = pin = release = 0.0
    clock = 0.0
    for group, keys in requests:
        clock += 1e-4
        pod = pods[group]
        started = time.thread_time()
        index.expire(clock)
        index.longest_prefix(keys, [pod])
        looked = time.thread_time()
        index.pin_speculative(keys, pod)
        pinned = time.thread_time()
        lookup += looked - started
        pin += pinned - looked
        in_flight[group].append(keys)
        if len(in_flight[group]) > IN_FLIGHT:
            done = in_flight[group].pop(0)
            for key in done[SHARED:]:  # its engine's KV event stores its own blocks
                holders = index._speculative.get(key)
                if holders is not None and pod in holders:
                    index._unguess(key, pod, holders)
            started = time.thread_time()
            index.release_speculative(done, pod, clock + 2.0)
            release += time.thread_time() - started
    count = len(requests)
    print(
        f"{count:,} requests: lookup (with expire) {lookup / count * 1e6:.1f} us, "
        f"pin {pin / count * 1e6:.1f} us, release {release / count * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main()
