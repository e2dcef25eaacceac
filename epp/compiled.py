"""The optional C extensions' one shared rule: a part whose extension was not built (no C compiler
at install) runs its pure-Python version, with the same results, and says so once a process, so
an operator who sees more CPU than the docs promise knows why."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import yaml

log = logging.getLogger(__name__)


@cache
def warn_python_fallback(part: str, cost: str) -> None:
    """Say once a process that `part` runs in Python, at `cost` (what the C version saves)."""
    log.warning(
        "%s: its C extension was not built (no C compiler at install, or `make install` not run "
        "since a pull): using the pure-Python version, same results at %s",
        part,
        cost,
    )


def safe_yaml(text: str) -> Any:
    """`yaml.safe_load` through libyaml when PyYAML has it: a 3,000-entry endpoints file parses in
    a third of the CPU, so its reload thread holds the GIL (and the event loop) a third as long."""
    if yaml.__with_libyaml__:
        return yaml.load(text, Loader=yaml.CSafeLoader)
    warn_python_fallback("YAML parsing (libyaml)", "about three times the CPU per file")
    return yaml.safe_load(text)
