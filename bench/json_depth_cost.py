"""What the request body's depth check (`epp/requests/_jsondepth.c`) costs on bodies of several
kinds: plain prose, where the scan skips whole 16-byte blocks, and bodies dense with the bytes it
must look at (code and tool output quoted in a prompt: an escape every few bytes; many small
arrays), where it cannot. The tree's build against the same source at `--baseline` (a git
revision, compiled here with the interpreter's own compiler flags), interleaved, best of
`--rounds`; the Python fallback's time beside them.

    PYTHONPATH=$PWD .venv/bin/python bench/json_depth_cost.py --baseline 856b107
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import subprocess
import sysconfig
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

import orjson

from epp.requests._jsondepth import scan
from epp.requests.jsontext import python_too_deep

SOURCE = "epp/requests/_jsondepth.c"


def bodies() -> dict[str, bytes]:
    tool_output = [
        {"id": i, "name": f"item {i}", "tags": ["a", "b"], "meta": {"x": i * 1.5}} for i in range(150)
    ]
    code = "def f(x):\n    return \"x\" + str(x)\n\tprint('a\\\\b')\n" * 300
    parts = [{"role": "user", "content": [{"type": "text", "text": f"part {i}"}]} for i in range(64)]
    return {
        "prose": orjson.dumps({"model": "m", "prompt": "hello world " * 1700}),
        "tool output (JSON) in a string": orjson.dumps(
            {"model": "m", "messages": [{"role": "tool", "content": json.dumps(tool_output)}]}
        ),
        "code in a string": orjson.dumps({"model": "m", "messages": [{"role": "user", "content": code}]}),
        "64 content parts": orjson.dumps({"model": "m", "messages": parts}),
        "escaped quotes": orjson.dumps({"model": "m", "prompt": '"' * 20_000}),
        "empty arrays": b'{"model":"m","x":[' + b"[]," * 7_000 + b"[]]}",
        "8,000 token ids": orjson.dumps({"model": "m", "prompt": list(range(100_000, 108_000))}),
    }


def compiled_at(revision: str, into: Path) -> Callable[[bytes], int]:
    """The depth of `SOURCE` as it was at `revision` (its `scan`, or before it read integers too,
    its `depth`), built with the interpreter's compiler flags."""
    source = into / "_jsondepth.c"
    source.write_bytes(
        subprocess.run(["git", "show", f"{revision}:{SOURCE}"], check=True, capture_output=True).stdout
    )
    library = into / f"_jsondepth{sysconfig.get_config_var('EXT_SUFFIX')}"
    flags = str(sysconfig.get_config_var("CFLAGS")).split()
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        ["gcc", "-shared", "-fPIC", *flags, f"-I{include}", str(source), "-o", str(library)], check=True
    )
    loader = importlib.machinery.ExtensionFileLoader("_jsondepth", str(library))
    spec = importlib.util.spec_from_loader("_jsondepth", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    if hasattr(module, "scan"):
        return lambda raw: int(module.scan(raw)[0])
    found: Callable[[bytes], int] = module.depth
    return found


def row(name: str, raw: bytes, baseline: Callable[[bytes], int] | None, rounds: int, number: int) -> str:
    """One body's table row: each check's best time of `rounds`, interleaved."""
    parsed = orjson.loads(raw)
    checks: dict[str, Callable[[], object]] = {
        "tree": lambda: scan(raw),
        "python": lambda: python_too_deep(raw, parsed),
    }
    if baseline is not None:
        assert baseline(raw) == scan(raw)[0]
        checks["base"] = lambda: baseline(raw)
    timed = dict.fromkeys(checks, float("inf"))
    for _ in range(rounds):
        for key, check in checks.items():
            timed[key] = min(timed[key], timeit.timeit(check, number=number) / number)
    base = f"{timed['base'] * 1e6:.1f}" if baseline is not None else "-"
    return f"| {name} | {len(raw):,} | {base} | {timed['tree'] * 1e6:.1f} | {timed['python'] * 1e6:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a git revision whose _jsondepth.c to time beside the tree's")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        baseline = compiled_at(args.baseline, Path(scratch)) if args.baseline else None
        print(f"| body | bytes | {args.baseline or '-'} µs | this tree µs | Python fallback µs |")
        print("|---|---|---|---|---|")
        for name, raw in bodies().items():
            print(row(name, raw, baseline, args.rounds, args.number))


if __name__ == "__main__":
    main()
