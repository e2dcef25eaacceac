"""JSON bodies read and written with orjson, their integers kept exact.

orjson keeps integers only within 64 bits (-2**63 .. 2**64 - 1): it reads a longer one as a float
(100000000000000000000 as 1e20) and refuses to write one. A client's `seed`, a `logit_bias` entry,
a tool schema's `const` or a field of its own may hold one, and a body the EPP rewrites (a model
rewrite, a plugin's change, the P/D sidecar's legs) would then reach the model server changed. So
the one pass over the text that checks its depth (`_jsondepth.c`) also notes a run of 20 digits
(or a minus and 19) outside strings, which every such integer is; only then are the parsed values
walked for a float that large, and only a body with one is read again, by the standard library's
`json`, which keeps every integer (the text is JSON orjson has already accepted, so nothing else
reads differently). Writing falls back to `json` only when orjson
refuses an integer. Every other body pays nothing more than the depth check it already paid.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import orjson

from epp.compiled import warn_python_fallback

try:  # the depth and long-integer check in C (_jsondepth.c): one pass over the body, strings skipped
    from epp.requests._jsondepth import scan as _compiled_scan
except ImportError:  # no C compiler at install: the brackets counted, the body written if need be
    _compiled_scan = None  # type: ignore[assignment]

MAX_JSON_DEPTH = 254
"""Deepest nesting of objects and arrays (the body itself is level 1) the EPP accepts: orjson writes
no deeper, and the EPP re-serialises parts of the body (the prompt it hashes, a body whose model it
rewrites). orjson reads up to 1,024 levels, so without this check a deeper body was a 500."""
MAX_JSON_CONTAINERS = 100_000
"""Arrays and objects a request body may open (`epp serve --max-json-containers`; 0: no limit):
orjson spends about 0.8 us on each array it makes, on the event loop, so a 16 MiB body of `[],`
held every other request 4 s. A chat of a thousand messages with content parts opens a few
thousand; counted by the C scan before the body is parsed."""
_limits = {"containers": MAX_JSON_CONTAINERS}
LONG_RUN = 20
"""Digits and minus signs in a row from which an integer may be past orjson's 64 bits
(-2**63 .. 2**64 - 1): 20 digits, or a minus and 19. Every integer of 19 digits fits."""
_INT64_BOUND = 2.0**63
_NUMBER_BYTES = bytes(48 if 48 <= byte <= 57 or byte == 45 else 32 for byte in range(256))  # to "0"
_LONG_RUN = b"0" * LONG_RUN


def limit_containers(limit: int) -> None:
    """Set the process's limit of arrays and objects a body may open (0: none)."""
    _limits["containers"] = limit


def container_limit() -> int:
    """The process's limit of arrays and objects a body may open (0: none)."""
    return _limits["containers"]


class TextShape(NamedTuple):
    """What the C scan reads of a JSON text: its deepest nesting, the arrays and objects it opens,
    and whether a run of LONG_RUN digits stands outside its strings."""

    deepest: int
    containers: int
    long_number: bool


def shape(raw: bytes) -> TextShape | None:
    """The C scan of `raw`, which need not be JSON (read before it is parsed); None without the
    C extension."""
    return None if _compiled_scan is None else TextShape(*_compiled_scan(raw))


def too_many_containers(raw: bytes, found: TextShape | None, value: Any = None) -> bool:
    """Whether the body opens more arrays and objects than the limit: from the C scan, before
    parsing (`value` None); without it, once parsed, the brackets counted (two C-level counts)
    and, only past the limit (brackets in strings count there), the values walked."""
    limit = container_limit()
    if not limit:
        return False
    if found is not None:
        return found.containers > limit
    if value is None or raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    opened, pending = 0, [value]
    while pending:
        item = pending.pop()
        if item.__class__ is dict:
            item = item.values()
        elif item.__class__ is not list:
            continue
        pending.extend(item)
        opened += 1
        if opened > limit:
            return True
    return False


def scan(raw: bytes, value: Any, found: TextShape | None = None) -> tuple[bool, bool]:
    """Of `value`, parsed from `raw` by orjson: whether it nests deeper than MAX_JSON_DEPTH (orjson
    cannot write it back), and whether it holds an integer orjson read as a float (then `exact`
    reads it again). In C, one pass over `raw` (the body is not written: see `python_too_deep`),
    or `found`, that pass made before parsing; only a text with a run of LONG_RUN digits and
    minus signs has its values walked for such a float, since a run that long is also an
    integer orjson keeps (2**64 - 1, -2**63)."""
    if found is None and _compiled_scan is not None:
        found = TextShape(*_compiled_scan(raw))
    if found is not None:
        too_deep, long_number = found.deepest > MAX_JSON_DEPTH, found.long_number
    else:
        warn_python_fallback("the request body's depth check", "about 40 us more per 20 KB body")
        too_deep, long_number = python_too_deep(raw, value), python_long_number(raw)
    return too_deep, long_number and _holds_a_float_past_64_bits(value)


def _holds_a_float_past_64_bits(value: Any) -> bool:
    """Whether a float of an integer's size orjson cannot keep (below -2**63 or from 2**64; a float
    that large is a whole number) is among `value`'s values. -2**63 itself counts: orjson keeps
    that integer as an int, so the float is an integer just below it (-2**63 - 1 down to
    -2**63 - 1024 round to it). A client's own float of that size (`1e20`) counts too: the second
    read gives it back the same."""
    pending = [value]
    while pending:
        item = pending.pop()
        if item.__class__ is float:
            if not -_INT64_BOUND < item < _INT64_BOUND:
                return True
        elif item.__class__ is dict:
            pending.extend(item.values())
        elif item.__class__ is list:
            pending.extend(item)
    return False


def python_too_deep(raw: bytes, body: Any) -> bool:
    """The depth half of `scan` without the C extension, and its reference: a parsed body holds only
    JSON values, so writing it fails only on its depth. Fewer opening brackets than the limit cannot
    nest that deep, and counting them (two C-level counts, byte by byte: ~18 us for a 20 KB body)
    is checked first: writing the body leaves a UTF-8 copy of each non-ASCII string attached to it
    for the body's lifetime (the str's cached UTF-8), which for a 14 MB accented completions prompt
    is 16 MB more held and 65 against 14 ms."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        return True
    return False


def python_long_number(raw: bytes) -> bool:
    """The long-integer half of `scan` without the C extension: a run of LONG_RUN digits and minus
    signs anywhere, strings included (a run inside a string only costs the walk of the values).
    Two C-level passes, ~22 us for a 20 KB body; a regular expression took 100 to 190 us."""
    return _LONG_RUN in raw.translate(_NUMBER_BYTES)


def exact(raw: bytes) -> Any:
    """`raw`, JSON that orjson has read, with its integers as written: the standard library's
    reader (orjson has already refused invalid UTF-8, lone surrogates, NaN and numbers past a
    double, so nothing else reads differently)."""
    return json.loads(raw.decode())


def loads(raw: bytes) -> Any:
    """orjson.loads (raising its JSONDecodeError), its integers exact: for bodies read without the
    EPP's depth limit (the simulator's requests, model servers' replies). A body nested deeper than
    MAX_JSON_DEPTH keeps orjson's reading (the standard library's reader recurses once a level, and
    orjson could not write such a body back anyway)."""
    value = orjson.loads(raw)
    too_deep, long_number = scan(raw, value)
    return exact(raw) if long_number and not too_deep else value


def dumps(value: Any, sort_keys: bool = False) -> bytes:
    """orjson.dumps (`sort_keys`: OPT_SORT_KEYS), or where it refuses an integer beyond 64 bits
    (which `exact` reads), the standard library's writer with orjson's compact separators."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except orjson.JSONEncodeError as error:
        if "64-bit" not in str(error):
            raise
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=sort_keys)
    return text.encode()
