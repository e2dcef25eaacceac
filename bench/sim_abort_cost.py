"""What aborting waiting requests costs the simulator's engine: n requests wait (random
priorities), then all are aborted, as a shutdown does (`abort_all`), or one by one in random
order, as clients going away do. CPU seconds per policy and n.

    .venv/bin/python bench/sim_abort_cost.py [--requests 1000 5000 20000]
"""

from __future__ import annotations

import argparse
import random
import time

from epp.sim.engine import SCHEDULING_POLICIES, Engine, Request
from epp.sim.profiles import TINY_TEST


def abort_seconds(policy: str, count: int, one_by_one: bool) -> float:
    engine = Engine(TINY_TEST.with_overrides(max_waiting=count + 1), "m", scheduling_policy=policy)
    rng = random.Random(1)
    requests = [
        Request(f"r{i}", [1, 2], 4, float(i), priority=rng.randint(-5, 5), block_hashes=[])
        for i in range(count)
    ]
    for request in requests:
        if engine.add(request) is not None:
            raise RuntimeError("a request was refused")
    rng.shuffle(requests)
    started = time.process_time()
    if one_by_one:
        for request in requests:
            engine.abort(request)
    else:
        engine.abort_all()
    elapsed = time.process_time() - started
    if engine.num_waiting or engine.stats.requests_aborted != count:
        raise RuntimeError("requests left waiting")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, nargs="+", default=[1000, 5000, 20000])
    args = parser.parse_args()
    print("| policy | waiting | abort_all | one by one, random order |")
    print("|---|---|---|---|")
    for policy in SCHEDULING_POLICIES:
        for count in args.requests:
            every = abort_seconds(policy, count, one_by_one=False)
            single = abort_seconds(policy, count, one_by_one=True)
            print(f"| {policy} | {count:,} | {every:.3f} s | {single:.3f} s |")


if __name__ == "__main__":
    main()
