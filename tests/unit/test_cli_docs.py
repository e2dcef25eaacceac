"""Every `epp` flag the README and docs/*.md name exists, spelled as `epp <command> --help` lists
it: in a backticked span that is a flag or an `epp ...` command, or on an `epp ...` line of a
code block. The few flags the docs name that are not `epp`'s are listed with the reason;
docs/benchmarks.md is left out, its spans being mostly the scripts' flags under bench/."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from epp.cli import SUBCOMMANDS, build_parser

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted(set((ROOT / "docs").glob("*.md")) - {ROOT / "docs" / "benchmarks.md"})]
NOT_EPP_FLAGS = {
    "--flag": "configuration.md's placeholder for Go's flag syntax",
    "--cpu": "bench/scheduler_bench.py's (scheduling.md)",
    "--director": "bench/scheduler_bench.py's (scheduling.md)",
    # sidecar.md, "Not implemented": llm-d's pd-sidecar flags this sidecar does not take.
    "--enable-p2p-pull": "llm-d's sidecar, not implemented",
    "--ec-connector": "llm-d's sidecar, not implemented",
    "--decode-chunk-size": "llm-d's sidecar, not implemented",
    "--configuration": "llm-d's sidecar, not implemented",
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
EPP_LINE = re.compile(r"^(?:\.venv/bin/)?(?:epp|python -m epp\.cli) ")


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        found.update(option for option in action.option_strings if option.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found |= option_strings(subparser)
    return found


def epp_flags() -> set[str]:
    return set().union(*(option_strings(build_parser(command)) for command in SUBCOMMANDS))


def flags_named(text: str) -> set[str]:
    named = {
        flag
        for span in re.findall(r"`([^`\n]+)`", text)
        if span.startswith("--") or EPP_LINE.match(span)
        for flag in FLAG.findall(span)
    }
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            if EPP_LINE.match(line.strip()):
                named |= set(FLAG.findall(line.split("#")[0]))
    return named


def test_every_flag_the_docs_name_is_one_of_epps() -> None:
    known = epp_flags() | set(NOT_EPP_FLAGS)
    unknown = sorted(
        f"{doc.relative_to(ROOT)}: {flag}" for doc in DOCS for flag in flags_named(doc.read_text()) - known
    )
    assert unknown == []


def test_the_listed_exceptions_are_not_epp_flags() -> None:
    assert sorted(set(NOT_EPP_FLAGS) & epp_flags()) == []
