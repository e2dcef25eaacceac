"""bench/rss_soak.py --heap: loaded by every Python process the soak's stack starts (this
directory is first on their PYTHONPATH), it acts only in `epp serve`. It starts tracemalloc, and
on SIGUSR2 writes a snapshot and the live objects counted by type into EPP_SOAK_HEAP_DIR, the
bench's way of seeing the EPP's Python heap between rounds (the EPP has no debug endpoint)."""

import os
import sys

HEAP_DIR = os.environ.get("EPP_SOAK_HEAP_DIR")

if HEAP_DIR and sys.orig_argv[1:4] == ["-m", "epp.cli", "serve"]:
    import gc
    import json
    import signal
    import tracemalloc
    from collections import Counter
    from pathlib import Path

    tracemalloc.start(int(os.environ.get("EPP_SOAK_FRAMES", "1")))
    _rounds = iter(range(1_000_000))

    def _dump(signum: int, frame: object) -> None:
        n = next(_rounds)
        base = Path(HEAP_DIR) / f"heap-{n}"
        gc.collect()
        tracemalloc.take_snapshot().dump(f"{base}.snapshot")
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        traced = tracemalloc.get_traced_memory()[0]
        Path(f"{base}.tmp").write_text(json.dumps({"traced": traced, "types": types}))
        os.replace(f"{base}.tmp", f"{base}.json")  # the bench waits for this name

    signal.signal(signal.SIGUSR2, _dump)
