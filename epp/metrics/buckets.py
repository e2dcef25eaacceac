"""The per-request histograms' buckets, GIE's (llm-d's families of the same measures use the same ones)."""

from __future__ import annotations


def _powers(start: float, stop: float, factor: float = 2.0) -> list[float]:
    buckets, value = [], start
    while value <= stop:
        buckets.append(value)
        value *= factor
    return buckets


DURATION_BUCKETS = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60,
    120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
]  # fmt: skip
REQUEST_SIZE_BUCKETS = _powers(64, 1024**3)
RESPONSE_SIZE_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536]
INPUT_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072,
                       262144, 524288, 1048576]  # fmt: skip
OUTPUT_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
NTPOT_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
HIT_RATIO_BUCKETS = [i / 10 for i in range(11)]
HIT_BYTES_BUCKETS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
