"""`epp bench scale`'s run with its outcome as a digest (`epp.bench.digest`: every request record,
the inter-token gaps, every engine's counters), and the process CPU of the run itself: a change
meant only to make a policy or the harness cheaper must print the digest `main` prints, in less
CPU. Takes `epp bench scale`'s options (the default policy here is `ours`).

    .venv/bin/python bench/scale_digest.py --policy ours --groups 1000 --per-group 20
"""

from __future__ import annotations

import argparse
import time

from epp.bench import scale
from epp.bench.digest import run_digest
from epp.bench.suite import Suite
from epp.bench.virtual import VirtualCluster, VirtualRun
from epp.bench.workload import generate
from epp.sim.profiles import get_profile


def main() -> None:
    parser = argparse.ArgumentParser()
    scale.add_arguments(parser)
    args = parser.parse_args()
    suite = Suite.load(args.suite)
    requests = generate(scale.workload(args), args.rate)
    for name in args.policy or ["ours"]:
        cluster = VirtualCluster(args.endpoints, get_profile(args.profile))
        run = VirtualRun(requests, suite.picker_config(suite.policy(name)), cluster)
        started = time.process_time()
        result = run.run()
        cpu = time.process_time() - started
        digest = run_digest(result, {pod: server.engine.stats for pod, server in run.servers.items()})
        print(f"{name}: digest {digest}, run CPU {cpu:.2f} s, wall {result.wall_seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
