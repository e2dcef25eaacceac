"""The body's scan in C (`_jsondepth.scan`) against the parsed body's own depth and against the
Python check it stands in for (`python_too_deep`): brackets inside strings, escaped quotes and
backslashes, a string's last byte a backslash's, depth 254 and 255 of arrays and of objects,
non-ASCII text, and every byte that matters at every offset of the 16-byte blocks the scan skips
by; and its runs of digits outside strings (integers orjson may read as floats) against a byte at
a time reference, across block boundaries. Skipped when the extension is not built."""

from __future__ import annotations

import ctypes
import json
import mmap
import random
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("epp.requests._jsondepth")

from epp.requests._jsondepth import scan as compiled_scan
from epp.requests.errors import RequestError
from epp.requests.jsontext import LONG_RUN, MAX_JSON_DEPTH, python_long_number, python_too_deep, scan
from epp.requests.parser import decode_body

# Text rich in what the scan must see through inside a string.
HOSTILE = '[]{}"\\/ aé日😀\n\t\x00\x1f'


def depth(raw: bytes | bytearray | memoryview) -> int:
    return compiled_scan(raw)[0]


def tree_shape(value: Any) -> tuple[int, int]:
    """The nesting of a parsed JSON value (the body itself is level 1) and its arrays and objects,
    walked."""
    deepest = containers = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            containers += 1
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest, containers


def check(raw: bytes) -> int:
    """The C depth of a JSON text, checked against the walk of what orjson reads and against the
    Python check's verdict."""
    body = orjson.loads(raw)
    found = depth(raw)
    assert (found, compiled_scan(raw)[1]) == tree_shape(body)
    assert scan(raw, body)[0] == python_too_deep(raw, body) == (found > MAX_JSON_DEPTH)
    return found


def nested(levels: int, kind: str, inner: bytes = b"1") -> bytes:
    """`levels` arrays (`[`) or objects (`{`) around `inner`."""
    if kind == "[":
        return b"[" * levels + inner + b"]" * levels
    return b'{"k":' * levels + inner + b"}" * levels


@pytest.mark.parametrize("kind", ["[", "{"])
@pytest.mark.parametrize("levels", [1, 2, 253, 254, 255, 256, 1000, 1023])
def test_arrays_and_objects_at_and_past_the_limit(kind: str, levels: int) -> None:
    assert check(nested(levels, kind)) == levels
    assert check(nested(levels, kind, b"[]")) == levels + 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"[[[{{{"', 0),
        (b'["]]]]", [["[["]]]', 3),
        (b'{"a": "}}}", "b": [{"c": "{[{["}]}', 3),
        (b'["\\"[[[", 1]', 1),  # an escaped quote does not end the string
        (b'["\\\\", [[1]]]', 3),  # the string is one backslash: its quote ends it
        (b'["\\\\\\"[", [1]]', 2),  # backslash, quote, bracket: all inside
        (b'["a\\\\"]', 1),  # a string whose last character is a backslash, last in the text
        (b'"\\\\"', 0),
        (b'["\\u005b\\u007b", [2]]', 2),  # escaped brackets are characters, not structure
        (b'{"\\"": {"\\\\": {"k": []}}}', 4),  # keys with quotes and backslashes
        ('["日本[語", {"é{": ["😀]"]}]'.encode(), 3),
        (b"  [ [ ] , { } ]  ", 2),
        (b"[]", 1),
        (b"{}", 1),
        (b"1", 0),
        (b"null", 0),
    ],
)
def test_brackets_inside_strings_and_escapes(raw: bytes, expected: int) -> None:
    assert check(raw) == expected


@pytest.mark.parametrize("pad", range(40))
@pytest.mark.parametrize(
    "piece",
    [b'"\\\\"', b'"\\""', b'"[{"', b'"]}"', b'"x\\\\"', b"[[]]", b'{"a":{}}', '"é]"'.encode()],
)
def test_every_offset_of_a_block(pad: int, piece: bytes) -> None:
    """The piece's bytes fall at each offset of the 16-byte blocks and in the bytes after the last
    whole block (read one at a time), with a string's text or blanks before it."""
    assert check(b'["' + b"a" * pad + b'", ' + piece + b", [[0]]]") == 3
    assert check(b"[" + b" " * pad + piece + b", [[0]]]") == 3


def reference_scan(raw: bytes) -> tuple[int, int, bool]:
    """The scan's documented answer on any text, a byte at a time: the deepest run of unclosed
    brackets outside strings, a backslash in a string escaping the byte after it, never below 0;
    the opening brackets outside strings; and whether LONG_RUN digits and minus signs stand in a
    row outside strings."""
    level = deepest = containers = i = digits = 0
    in_string = long_number = False
    while i < len(raw):
        byte = raw[i : i + 1]
        digits = digits + 1 if not in_string and (byte.isdigit() or byte == b"-") else 0
        long_number = long_number or digits >= LONG_RUN
        if byte == b'"':
            in_string = not in_string
        elif in_string and byte == b"\\":
            i += 1
        elif not in_string and byte in b"[{":
            level += 1
            containers += 1
            deepest = max(deepest, level)
        elif not in_string and byte in b"]}":
            level = max(level - 1, 0)
        i += 1
    return deepest, containers, long_number


# Dense in what the scan looks at, so that blocks hold several of them, escapes fall on a block's
# last byte, and bytes >= 0x80 (negative as signed chars) sit beside them.
DENSE = b'[]{}"\\ a\x80\xff\xdb'


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(list(DENSE)), max_size=80).map(bytes))
def test_dense_text_reads_as_the_byte_at_a_time_reference(raw: bytes) -> None:
    """Any text, JSON or not: several bytes that matter in one 16-byte block, taken in order."""
    assert compiled_scan(raw) == reference_scan(raw)


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"0" * 7, b"9" * 12, b"5", b"-", b'"', b"\\", b"[", b",", b" ", b"x", b"/", b":"]),
        max_size=40,
    ).map(b"".join)
)
def test_runs_of_digits_read_as_the_byte_at_a_time_reference(raw: bytes) -> None:
    """Runs of digits inside and outside strings, broken by quotes, escapes and bytes just below and
    above the digits' range (`/`, `:`), falling across the 16-byte blocks' edges."""
    assert compiled_scan(raw) == reference_scan(raw)


@pytest.mark.parametrize("pad", range(34))
@pytest.mark.parametrize(
    "number",
    [b"1" + b"0" * 18, b"-" + b"9" * 18, b"1" + b"0" * 19, b"-" + b"9" * 19, b"1" + b"0" * 39],
    ids=lambda n: f"{n[:1].decode()}{len(n)}",
)
def test_an_integer_at_every_offset_of_a_block(pad: int, number: bytes) -> None:
    """A number starting at each offset of two blocks, outside strings and inside one: 19
    characters (a minus counted) are not long, 20 are (10**19 and -10**19 + 1, which orjson
    still keeps, and 10**39, which it does not); decode_body reads each as written."""
    long_number = len(number) >= LONG_RUN
    outside = b'{"a": "' + b"x" * pad + b'", "n": ' + number + b"}"
    inside = b'{"a": "' + b"x" * pad + number + b'"}'
    assert compiled_scan(outside) == (1, 1, long_number)
    assert compiled_scan(inside) == (1, 1, False)
    assert python_long_number(outside) == python_long_number(inside) == long_number
    assert decode_body(outside)["n"] == int(number)


@pytest.fixture
def page_end() -> Iterator[int]:
    """The address of the end of a readable page followed by one that is not: reading a byte past
    it faults."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = mmap.PAGESIZE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    base = libc.mmap(None, 2 * page, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    assert libc.mprotect(base + page, page, 0) == 0  # PROT_NONE, which the mmap module lacks
    yield base + page
    libc.munmap(base, 2 * page)


@pytest.mark.parametrize("length", range(48))
def test_text_ending_at_a_page_end_is_never_read_past(page_end: int, length: int) -> None:
    """Every length up to three blocks, ending where the next byte faults: the 16-byte loads stop
    at the last whole block, and a backslash on a block's last byte or the text's does not step
    the scan past the end."""
    rng = random.Random(length)
    texts = [b'"' + b"\\" * length, b"[" * length, b'"' + b"a" * length + b"\\", b"1" * length]
    texts += [bytes(rng.choice(DENSE) for _ in range(length)) for _ in range(50)]
    for text in texts:
        text = text[-length:] if length else b""
        ctypes.memmove(page_end - length, text, length)
        view = memoryview((ctypes.c_char * length).from_address(page_end - length)).cast("B")
        assert compiled_scan(view) == reference_scan(text)


def test_a_long_string_of_escapes_and_brackets() -> None:
    text = '\\"[' * 5000 + "\\" + "{" * 300
    raw = orjson.dumps({"model": "m", "prompt": text, "x": [[[]]]})
    assert raw.count(b"[") + raw.count(b"{") > 3 * MAX_JSON_DEPTH
    assert check(raw) == 4


def test_text_that_is_not_json_never_reads_past_the_end_nor_goes_below_zero() -> None:
    assert depth(b"]]]][") == 1
    assert depth(b'"\\') == 0  # a backslash last: the escaped byte would be past the end
    assert depth(b'["abc') == 1
    assert depth(b"") == 0
    assert depth(bytearray(b"[[1]]")) == 2  # any bytes-like object
    assert depth(memoryview(b"[[[1]]]")[1:-1]) == 2
    with pytest.raises(TypeError):
        depth("[]")  # type: ignore[arg-type]


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what orjson writes back
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(HOSTILE)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(HOSTILE, max_size=6), children, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=600, deadline=None)
@given(json_values, st.sampled_from([None, 0, 1, 3]), st.booleans())
def test_generated_json_reads_as_deep_as_it_parses(value: Any, indent: int | None, ascii_only: bool) -> None:
    """orjson's compact text, and json's with blanks and `\\uXXXX` escapes."""
    check(orjson.dumps(value))
    check(json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode())


def test_the_compiled_check_does_not_write_a_body_with_many_brackets() -> None:
    """Past the bracket count the Python check writes the body, which attaches a UTF-8 copy to each
    non-ASCII string; the C check reads only the text, so even such a body keeps none."""
    prompt = "héllo [wörld] {x} " * 10_000
    raw = orjson.dumps({"model": "m", "prompt": prompt})
    fresh = orjson.loads(raw)["prompt"]
    body = decode_body(raw)
    assert sys.getsizeof(body["prompt"]) == sys.getsizeof(fresh)


def test_a_body_past_the_limit_is_still_a_400() -> None:
    raw = b'{"model": "m", "prompt": "[[[", "x": ' + nested(MAX_JSON_DEPTH, "[") + b"}"
    with pytest.raises(RequestError) as info:
        decode_body(raw)
    assert info.value.status == 400
    assert "nested deeper than the limit of 254 levels" in info.value.message
