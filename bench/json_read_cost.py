"""What reading a request body costs (`epp.requests.parser.decode_body`: orjson's parse, the depth
and long-integer scan, and the exact second read for a body with an integer past 64 bits), on
bodies of several kinds. Run it with one tree's checkout on PYTHONPATH, then another's, to
compare (the script imports only `decode_body`, which every version has); best of `--rounds`.

    PYTHONPATH=$PWD .venv/bin/python bench/json_read_cost.py
"""

from __future__ import annotations

import argparse
import json
import timeit
from functools import partial

import orjson

from epp.requests.parser import decode_body


def bodies() -> dict[str, bytes]:
    prose = "the quick brown fox jumps over the lazy dog 2024 12:30 id 42 x " * 280
    chat = {"model": "m", "messages": [{"role": "user", "content": prose}], "max_tokens": 100}
    tool_output = [{"id": i, "name": f"item {i}", "meta": {"x": i * 1.5}} for i in range(150)]
    return {
        "chat, 18 KB of prose": orjson.dumps(chat),
        "chat, a 64-bit seed": orjson.dumps({**chat, "seed": 2**63 - 1}),
        "chat, tool output (JSON) in a string": orjson.dumps(
            {"model": "m", "messages": [{"role": "tool", "content": json.dumps(tool_output)}]}
        ),
        "completions, 8,000 token ids": orjson.dumps({"model": "m", "prompt": list(range(100_000, 108_000))}),
        "chat, a seed of 10**20": json.dumps({**chat, "seed": 10**20}).encode(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=300)
    args = parser.parse_args()
    print("| body | bytes | µs |")
    print("|---|---|---|")
    for name, raw in bodies().items():
        best = min(timeit.repeat(partial(decode_body, raw), number=args.number, repeat=args.rounds))
        print(f"| {name} | {len(raw):,} | {best / args.number * 1e6:.1f} |")


if __name__ == "__main__":
    main()
