"""argparse types for numbers within bounds, shared by every command line (`epp run`, `epp serve`'s
observability flags, `epp sim`): one rule, each flag's own wording."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def number_in_range(
    kind: Callable[[str], N],
    minimum: N | None = None,
    maximum: N | None = None,
    *,
    message: str,
    not_a_number: str | None = None,
    name: str = "number",
) -> Callable[[str], N]:
    """An argparse type: `kind(text)` from `minimum` to `maximum` inclusive (None: unbounded; NaN
    is out of range). `message` (out of range) and `not_a_number` are str.format templates over
    `text` (as given) and, in `message`, `value` (converted). Without `not_a_number`, argparse
    words a non-number itself after `name`: "invalid NAME value: 'x'"."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            if not_a_number is None:
                raise
            raise argparse.ArgumentTypeError(not_a_number.format(text=text)) from None
        if not ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)):
            raise argparse.ArgumentTypeError(message.format(text=text, value=value))
        return value

    parse.__name__ = name
    return parse
