"""The page read in C (`_promscan`) against the pure-Python one, the reference: generated model
server pages and hostile ones (NUL bytes, carriage returns, lines of tens of kilobytes, no newline
at the end, a family's group repeated, label blocks with stray braces and quotes, values such as
`1_000`, `infinity`, `1e999` or `0x10`, pages of a megabyte), read page after page by one
extractor of each kind with its own hints: every name reads the same samples (labels and exact
values), leaves the same hints, and the whole-page check says the same. Skipped when the extension
is not built."""

from __future__ import annotations

import math
import sys
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("epp.datalayer._promscan")

from epp.datalayer import promtext
from epp.datalayer.promtext import Extractor, Hints, Sample, Seen, _CompiledWanted, _Wanted
from tests.unit.datalayer.test_promtext_agreement import pages as engine_pages

NAMES = ("vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:e2e_seconds_count", "m_total")
# Lines that start like a wanted name but are not it, and the wanted names' families.
LOOKALIKES = (
    "vllm:num_requests_running_x",
    "vllm:num_requests_runnin",
    "vllm:kv_cache_usage",
    "vllm:e2e_seconds_bucket",
    "vllm:e2e_seconds_sum",
    "vllm:e2e_seconds",
    "m_created",
    "m",
    "",
)
LABEL_PIECES = (b'a="b"', b",", b"{", b"}", b'"', b"\\", b'\\"', b"\\n", b"\x00", b"\xff", b" ", b"=", b"x")
VALUES = (
    b"1",
    b"-0.0",
    b"NaN",
    b"nan",
    b"-nan",
    b"+Inf",
    b"-Inf",
    b"inf",
    b"infinity",
    b"+infinityx",
    b"1_000",
    b"1__0",
    b"_1",
    b"1e999",
    b"-1e999",
    b"1e-400",
    b"0x10",
    b"1.5e+06",
    b"\xd9\xa1",
    b"1\x00",
    b"",
    b"}",
    b"3.0 1700000000000",
    b"2 x y",
    b".",
    b"e5",
    b"1e",
    b"12345678901234567890",
    b"+1",
    b"+.5",
    b"1.",
    b"1E5",
    b"1e+",
    b"-iNfInItY",
    b"nan(1)",
    b"1\x1c",
)
BLANKS = (b" ", b"\t", b"  \t", b"\r", b"\x0b", b"\x0c", b"")
# A name longer than HINT_SLACK: from a hint near the largest index, the search that starts over
# from the page's start ends past that index.
LONG_NAME = "vllm:" + "x" * 2 * promtext.HINT_SLACK


@st.composite
def hostile_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(("sample", "sample", "sample", "help", "comment", "blank", "bytes")))
    name = draw(st.sampled_from(NAMES + LOOKALIKES)).encode()
    if kind == "help":
        return draw(st.sampled_from((b"# HELP ", b"# TYPE ", b"#  HELP ", b"# HELPx"))) + name + b" x"
    if kind == "comment":
        return draw(st.sampled_from((b"#", b"# a comment", b"#HELP", b"# HELP")))
    if kind == "blank":
        return draw(st.sampled_from((b"", b" ", b"\r")))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    line = name
    if draw(st.booleans()):
        line += b"{" + b"".join(draw(st.lists(st.sampled_from(LABEL_PIECES), max_size=6))) + b"}"
        if draw(st.booleans()):  # a stray brace after the block
            line += draw(st.sampled_from((b"}", b"{", b" }")))
    return line + draw(st.sampled_from(BLANKS)) + draw(st.sampled_from(VALUES))


@st.composite
def hostile_pages(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(hostile_lines(), max_size=30))
    if draw(st.integers(0, 9)) == 0:  # one line of tens of kilobytes
        lines.insert(
            draw(st.integers(0, len(lines))), b'vllm:num_requests_running{a="' + b"x" * 70_000 + b'"} 1'
        )
    page = b"\n".join(lines)
    return page + draw(st.sampled_from((b"\n", b"", b"\n\n", b"\x00")))


@st.composite
def generated_pages(draw: st.DrawFn) -> bytes:
    page = draw(engine_pages())[1].encode()
    if draw(st.booleans()):  # a family's group repeated, against the format
        lines = page.split(b"\n")
        at = draw(st.integers(0, len(lines)))
        page = b"\n".join(lines[:at] + lines + lines[at:])
    return page


any_pages = st.one_of(hostile_pages(), generated_pages())


def _comparable(samples: tuple[Sample, ...] | list[Sample]) -> list[tuple[dict[str, str], str]]:
    """Labels and exact values (NaN, the sign of zero)."""
    return [(dict(s.labels), repr(s.value) if not math.isnan(s.value) else "nan") for s in samples]


def _hints(hints: Hints) -> dict[str, tuple[object, ...]]:
    return {
        name: (s.at, s.changed, s.back, s.window, s.to_end, s.from_start, _comparable(s.samples))
        for name, s in hints.items()
    }


def _read_both(page: bytes, names: list[str], state: dict[str, tuple[Extractor, Hints]]) -> None:
    """One page read by both extractors with their own hints: the same samples, the same hints."""
    python, python_hints = state["python"]
    compiled, compiled_hints = state["compiled"]
    assert compiled.same(page, compiled_hints, names) == python.same(page, python_hints, names)
    assert _hints(compiled_hints) == _hints(python_hints)
    for name in names:
        read = compiled.read(page, name, compiled_hints)
        assert _comparable(read) == _comparable(python.read(page, name, python_hints)), name
    assert _hints(compiled_hints) == _hints(python_hints)
    assert compiled._labels.keys() == python._labels.keys()


def _extractors(names: list[str]) -> dict[str, tuple[Extractor, Hints]]:
    return {
        "python": (Extractor(names, compiled=False), {}),
        "compiled": (Extractor(names, compiled=True), {}),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(any_pages, min_size=1, max_size=4),
    st.lists(st.sampled_from(NAMES + LOOKALIKES[:-1]), min_size=1),
)
def test_compiled_read_is_the_python_read(pages: list[bytes], names: list[str]) -> None:
    """Page after page (a server's next page shifted, edited or unrelated): the same reads and hints."""
    state = _extractors(names)
    for page in pages:
        _read_both(page, names, state)
        _read_both(page, names, state)  # the same page again: replayed, or read again, alike


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_pages, st.sampled_from(NAMES + LOOKALIKES), st.lists(st.integers(-5, 80_000), max_size=6))
@example(b"x 1\n" + b"y" * 100 + b"\n", LONG_NAME, [sys.maxsize, sys.maxsize - promtext.HINT_SLACK])
@example(b"x 1\n" + LONG_NAME.encode() + b" 2\n", LONG_NAME, [sys.maxsize])
def test_compiled_search_and_read_match_at_any_hint(page: bytes, name: str, hints: list[int]) -> None:
    """`locate` from any hint (before, inside or past the page, at a line of the name or not, near
    the largest index), and the read from there, give the same position, samples and hints."""
    python, compiled = _Wanted(name), _CompiledWanted(name)
    for hint in [-1, 0, 1, len(page), *hints]:
        assert compiled.locate(page, hint) == python.locate(page, hint)
        python_seen, compiled_seen = Seen(), Seen()
        python_seen.at = compiled_seen.at = hint
        python_cache: dict[bytes, dict[str, str]] = {}
        compiled_cache: dict[bytes, dict[str, str]] = {}
        samples = python.read(page, python_seen, python_cache)
        compiled_samples = compiled.read(page, compiled_seen, compiled_cache)
        assert _comparable(compiled_samples) == _comparable(samples)
        assert all(type(s) is Sample for s in compiled_samples)
        assert _hints({name: compiled_seen}) == _hints({name: python_seen})
        assert compiled_cache == python_cache


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(generated_pages(), hostile_pages())
def test_megabyte_pages_read_the_same(generated: bytes, hostile: bytes) -> None:
    """A page of a megabyte: the wanted series after ~1 MB of other families, or missing."""
    filler = b"".join(b'other_family_%d{le="%d"} %d\n' % (i % 97, i, i) for i in range(40_000))
    names = list(NAMES)
    for page in (filler + generated, filler + hostile, filler, generated + filler):
        state = _extractors(names)
        _read_both(page, names, state)
        _read_both(b"# shifted\n" + page, names, state)


def test_ten_megabyte_hostile_pages_read_the_same() -> None:
    """Pages of 10 MB: one line of 10 MB in the wanted family (NUL bytes and invalid UTF-8 in its
    label block), a wanted name past 10 MB of NULs or of such bytes, the page cut mid-line without
    a newline, a long value, 640 KB of blank lines in a group: read alike, page after page."""
    size = 10 * 1024 * 1024
    # No closing brace: the Python reference's label pattern is quadratic in a line's braces.
    junk = (b'\x00\xff\xfe{"=\\ab' * (size // 9))[:size]
    name = NAMES[0].encode()
    pages = [
        b"# TYPE " + name + b" gauge\n" + name + b'{a="' + junk + b'"} 1\n' + name + b" 2\n",
        b"\x00" * size + b"\n" + name + b'{a="x"} 4\n',
        junk + b"\n" + name + b'{a="' + junk[: size // 2],  # cut mid-line
        name + b" " + b"9" * 4096 + b"\n" + name + b"{} 3",
        b"\n" * (size // 16) + name + b" 5",
    ]
    state = _extractors(list(NAMES))
    for page in pages + pages[::-1]:
        _read_both(page, list(NAMES), state)


@pytest.mark.parametrize("line", ["braces", "value"])
def test_a_line_of_ten_megabytes_reads_in_one_pass(line: str) -> None:
    """The C read finds a label block's end as the line's last brace, and a value's end, in one
    pass: a line of 10 MB of braces, or a value of 10 MB before another line of the family, reads
    as a short one of the same shape does (in ~0.1 s; the Python reference's regexes backtrack
    over such a line, ~1.4 s at 200 KB of braces here, growing with the square of the line, so
    it is compared on the short one only)."""
    name = NAMES[0].encode()

    def page(size: int) -> bytes:
        if line == "value":
            return name + b" " + b"9" * size + b"\n" + name + b"{} 3\n"
        junk = (b'\x00\xff\xfe{}"=\\' * (size // 9 + 1))[:size]
        return b"# TYPE " + name + b" gauge\n" + name + b'{a="' + junk + b'"} 1\n' + name + b"{} 3\n"

    _read_both(page(900), list(NAMES), _extractors(list(NAMES)))
    read = Extractor(list(NAMES), compiled=True).extract_bytes(page(10 * 1024 * 1024))[NAMES[0]]
    assert [s.value for s in read] == [math.inf if line == "value" else 1.0, 3.0]


def test_label_cache_is_cleared_when_full_as_in_python() -> None:
    """Past 16,384 distinct label blocks the cache starts again, in C as in Python."""
    page = b"".join(b'm_total{n="%d"} %d\n' % (i, i) for i in range(17_000))
    state = _extractors(["m_total"])
    _read_both(page, ["m_total"], state)
    assert len(state["compiled"][0]._labels) == 17_000 - 16_384


def test_bad_arguments_are_refused() -> None:
    from epp.datalayer import _promscan

    with pytest.raises(TypeError, match="page must be bytes"):
        _promscan.locate("text", b"\nm", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needle must be a newline and a name"):
        _promscan.locate(b"m 1\n", b"m", 0)
    with pytest.raises(TypeError, match="sample_type must be a tuple subclass"):
        _promscan.read(b"\nm", b"m", {}, dict, dict, b"m 1\n", Seen())  # type: ignore[type-var]
    # A tuple subclass whose instances are more than a tuple: refused as tuple.__new__ refuses it
    # (made as a tuple, its deallocator read fields past the two items).
    with pytest.raises(TypeError, match=r"tuple.__new__\(time.struct_time\) is not safe"):
        _promscan.read(b"\nm", b"m", {}, dict, time.struct_time, b"m 1\n", Seen())  # type: ignore[type-var]
    with pytest.raises(AttributeError):
        _promscan.read(b"\nm", b"m", {}, dict, Sample, b"m 1\n", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="read expected 7 arguments, got 2"):
        _promscan.read(b"\nm", b"m")  # type: ignore[call-arg]


def test_a_seen_whose_fields_are_not_plain_slots_is_read_through_its_attributes() -> None:
    """The C read uses a Seen's slots directly only while its type's fields are plain slots: a
    property in a subclass, or one set on the type after reads that used the slots, is called."""
    from epp.datalayer import _promscan

    calls: list[str] = []

    def watched(name: str) -> property:
        slot = getattr(Seen, name)
        return property(
            lambda self: calls.append(f"get {name}") or slot.__get__(self),
            lambda self, value: calls.append(f"set {name}") or slot.__set__(self, value),
        )

    class Watched(Seen):
        __slots__ = ()
        at = watched("at")

    class Plain(Seen):
        __slots__ = ()

    page = b'# TYPE m gauge\nm{a="1"} 1\nm{a="2"} 2\n'

    def read(seen: Seen) -> tuple[Sample, ...]:
        return _promscan.read(b"\nm", b"m", {}, promtext._labels, Sample, page, seen)

    expected = (({"a": "1"}, 1.0), ({"a": "2"}, 2.0))
    seen = Watched()
    calls.clear()  # Seen.__init__'s
    assert read(seen) == expected
    assert calls == ["get at", "set at"]
    plain = Plain()
    read(plain)
    assert not calls[2:]  # plain slots: no attribute call
    Plain.window = watched("window")  # type: ignore[assignment]
    assert read(plain) == expected
    assert calls[2:] == ["get window", "set window"]
