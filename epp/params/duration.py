"""Go-style durations (`50ms`, `1.5s`, `2m`, `1h30m`) as GIE and llm-d configs write them."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds. Bare numbers are seconds; strings must be Go duration syntax. NaN and infinity are
    refused, as Go refuses them: an endless timeout hangs and a NaN bound turns its check off."""
    if isinstance(text, int | float):
        return _finite(text, float(text))
    value = text.strip()
    if value in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _SCALE[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        try:
            total = float(value)
        except ValueError:
            raise ValueError(f"invalid duration {text!r}: use Go syntax such as 50ms, 2s, 1m30s") from None
    return _finite(text, total)


def _finite(text: str | float | int, seconds: float) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {text!r}: not a finite duration")
    return seconds
