"""The prefix index's C tables (_blockindex.c) where a C bug would crash the EPP or quietly change
its routing: objects made without `__init__`, allocations failing mid-operation, odd arguments,
and reference counts. Probes that could crash run in a child interpreter, so a crash is a failed
test rather than a dead test run. Skipped when the extension is not built."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("epp.scheduling.prefix._blockindex")

from epp.scheduling.prefix._blockindex import BlockIndex


def run_isolated(code: str) -> str:
    """Run `code` in a child interpreter; its stdout, or a failure naming how it ended."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def test_an_index_made_without_init_is_usable() -> None:
    """`BlockIndex.__new__(BlockIndex)` skips `__init__`; its tables must exist all the same."""
    out = run_isolated(
        """
        from epp.scheduling.prefix._blockindex import BlockIndex
        tables = BlockIndex.__new__(BlockIndex)
        print(tables.match([1], []), tables.size())
        tables.add(0, [1, 2], 10)
        print(tables.lru(0), tables.match([1, 2], ["a"]))
        """
    )
    assert out.split("\n")[:2] == ["{} 0", "[1, 2] {'a': 2}"]


def test_arguments_to_the_constructor_are_refused() -> None:
    with pytest.raises(TypeError):
        BlockIndex(1)  # type: ignore[call-arg]
