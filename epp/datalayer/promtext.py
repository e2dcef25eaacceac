"""Cheap extraction of a few series from Prometheus text exposition.

A model server's /metrics page is tens of kilobytes, mostly histograms the EPP never reads; a full
parser would cost more than the scrape, so only the wanted families' lines are located and parsed.
Each wanted name's search and read run in C (`_promscan.c`, built at install) when the extension
was built; the Python below is the reference it is tested against, and the fallback."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from epp.compiled import warn_python_fallback

try:  # the same read in C (_promscan.c), built at install
    from epp.datalayer import _promscan
except ImportError:  # built without a C compiler
    _promscan = None  # type: ignore[assignment]

COMPILED = _promscan is not None

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
_SPEC = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$", re.DOTALL)
# One equality matcher of a selector, quoted (PromQL) or not (GIE accepts both), and its separator.
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^",}\s=!~]+))\s*(,|$)')
_ESCAPE = re.compile(r'\\[\\n"]')
_ESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
_LABEL_CACHE_SIZE = 16384  # a few blocks per endpoint for a thousand endpoints; ~8 MB at most
_BLANK = r"[ \t\r\f\v]"  # whitespace within a line


class Sample(NamedTuple):
    """One series of a metric: its labels and value (a tuple: built for every line read, and a
    frozen dataclass cost four times as much to make)."""

    labels: dict[str, str]
    value: float


# Makes a Sample without the Python-level __new__ NamedTuple generates: half the cost.
_new_sample = tuple.__new__


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A PromQL-style instant selector: `name{label=value,...}` (quotes optional)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MetricSpec:
        """GIE's syntax, strictly: a metric name and optional equality matchers, values quoted
        or not; anything else (other matcher operators, a stray character) is an error."""
        match = _SPEC.match(text)
        if not match:
            raise ValueError(f"invalid metric spec {text!r}: expected name{{label=value,...}}")
        name, block = match.group(1), match.group(2)
        pairs: list[tuple[str, str]] = []
        position = 0
        body = (block or "").strip()
        while position < len(body):
            matcher = _MATCHER.match(body, position)
            if matcher is None:
                raise ValueError(
                    f"invalid metric spec {text!r}: label matchers must be label=value or "
                    f'label="value", separated by commas (at {body[position:]!r})'
                )
            quoted, bare = matcher.group(2), matcher.group(3)
            pairs.append((matcher.group(1), _unescape(quoted) if quoted is not None else bare))
            position = matcher.end()
        return cls(name, tuple(pairs))

    def matches(self, labels: dict[str, str]) -> bool:
        """PromQL equality: an absent label equals the empty string."""
        return all(labels.get(k, "") == v for k, v in self.labels)


def _unescape(value: str) -> str:
    """The text format's three escapes, in one left-to-right pass (an escaped backslash before an
    n is a backslash and an n, not a newline); any other backslash stays as it is."""
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: _ESCAPED[m.group(0)], value)


# What a family's sample names may add to the family's name: the lines of a wanted name's group
# all start with the wanted name less one of these.
_SAMPLE_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info")
_AFTER_NAME = (b"{", b" ", b"\t")  # what follows a sample's name on its line
_HELP_OR_TYPE = (b"# HELP ", b"# TYPE ")
# A name found on an endpoint's last page is searched for from this far before where it was: values
# change length between scrapes, and series come and go.
HINT_SLACK = 1024


class Seen:
    """What reading one wanted name left for the endpoint's next page: where the name's first line
    began (-1: not on the page), the samples read, and the bytes of the page that read depended
    on (`window`, from `back` bytes before `at`; `to_end`: up to the page's end; None if the read
    cannot be replayed). Which lines are the name's depends only on the bytes from the newline
    the walk back over its group stopped after to the first byte past the group that shows it
    ended; so a page with the same bytes around the name's line, wherever that line now is, reads
    the same, and a series whose values did not change is not parsed again."""

    __slots__ = ("at", "back", "changed", "from_start", "samples", "to_end", "window")

    def __init__(self) -> None:
        self.at = -1
        self.changed = True  # whether the last read parsed lines, or found the name gone
        self.back = 0
        self.window: bytes | None = None
        self.to_end = False
        self.from_start = False  # the window began at the page's first byte
        # A tuple: a replayed read hands this very object to the next scrape's consumers.
        self.samples: tuple[Sample, ...] = ()

    def same(self, page: bytes, at: int) -> bool:
        """Whether `page`, with the name's line at `at`, has the bytes the last read looked at."""
        window = self.window
        if window is None:
            return False
        lo = at - self.back
        # A read whose window began at the page's start replays only there: elsewhere, lines of
        # the group may come before it (the walk back stopped at the page's start, not a boundary).
        if lo < 0 or (lo and self.from_start):
            return False
        return page.startswith(window, lo) and (not self.to_end or len(page) == lo + len(window))


Hints = dict[str, Seen]
"""What each wanted name's read left on one endpoint's last page."""

Reader = Callable[[bytes, Seen], tuple["Sample", ...]]
"""One wanted name's read of a page, from and into its `Seen` (a partial: with the C extension,
no Python frame between the caller and the C)."""


class SeriesByName(Protocol):
    """A page's series by metric name, as an engine reads them (a dict, or `PageSeries`)."""

    def get(self, name: str, /) -> Sequence[Sample] | None: ...


class _Wanted:
    """How to find one wanted name's lines on a page."""

    __slots__ = ("alone", "family", "first", "group", "head", "line", "lookahead", "needle")

    def __init__(self, name: str) -> None:
        family = next((name[: -len(s)] for s in _SAMPLE_SUFFIXES if name.endswith(s)), name)
        self.family = family.encode()
        self.head = name.encode()
        self.needle = b"\n" + self.head
        # How far past the group's last line the patterns below look to see that the group ends:
        # a newline and "# HELP " or "# TYPE " and the family's name, at most.
        self.lookahead = 1 + len(_HELP_OR_TYPE[0]) + len(self.family)
        # A line that may belong to the group: it starts with the family's name, or is blank, or a
        # comment other than another family's HELP or TYPE.
        escaped = re.escape(self.family)
        more = rb"(?:" + escaped + rb"|# (?:HELP|TYPE) " + escaped + rb"|#(?! (?:HELP|TYPE) )|\n)"
        # From a line of the group on, the lines that may belong to it: ends at the newline after
        # the group's last line.
        self.group = re.compile(rb"[^\n]*(?:\n(?=" + more + rb")[^\n]*)*")
        labelled = rf"\{{([^\n]*)\}}(?![^\n]*\}}){_BLANK}*"  # `{labels}`, to the line's last brace
        unlabelled = rf"[ \t]{_BLANK}*"
        line = rf"{re.escape(name)}(?:{labelled}|{unlabelled})(\S+)".encode()
        self.line = re.compile(b"\n" + line)
        self.first = re.compile(line)  # the page's first line
        # One sample line from its start, when the line after it ends the group.
        self.alone = re.compile(line + rb"[^\n]*(?=\n(?!" + more + rb")|\Z)")

    def locate(self, page: bytes, hint: int) -> tuple[int, bool]:
        """The start of a sample line of the name (-1 if the page has none), looked for at
        `hint` first, then from a little before it, then from the page's start; and whether lines
        of its group may come before it."""
        if (
            hint > 0
            and page.startswith(self.needle, hint - 1)
            and page.startswith(_AFTER_NAME, hint + len(self.head))
        ):
            return hint, True
        return self._search(page, hint)

    def lines(self, page: bytes, at: int, walk: bool) -> tuple[list[tuple[bytes, ...]], int, int]:
        """The (label block, value) of each of the name's sample lines in the group of the one
        at `at`; and, when `walk` (or at the page's start), the part of the page [lo, hi) that
        result depends on (lo is -1 otherwise)."""
        start = line = at
        if walk:
            # Not necessarily the group's first sample line: walk back over the group's lines
            # before it, up to the group's HELP or TYPE (which come first) or another family.
            opens, family = (self.family, b"#", b"\n"), self.family
            while line > 0:
                line = page.rfind(b"\n", 0, line - 1) + 1
                if page.startswith(_HELP_OR_TYPE, line) or not page.startswith(opens, line):
                    break
                if page.startswith(family, line):
                    start = line
        # From the newline the walk stopped after; at the page's start there is nothing before.
        lo = (line - 1 if line > 0 else 0) if walk or not at else -1
        if start == at:
            alone = self.alone.match(page, at)
            if alone is not None:
                return [alone.groups(b"")], lo, alone.end() + self.lookahead
        end = self.group.match(page, start).end()  # type: ignore[union-attr]  # matches empty
        found: list[tuple[bytes, ...]] = self.line.findall(page, start - 1 if start else 0, end)
        if start == 0 and (first := self.first.match(page, 0, end)) is not None:
            found.insert(0, first.groups(b""))
        return found, lo, end + self.lookahead

    def reader(self, parsed: dict[bytes, dict[str, str]]) -> Reader:
        """`read` with the extractor's label cache: what `Extractor` calls for each page."""
        return functools.partial(self.read, parsed=parsed)

    def read(self, page: bytes, seen: Seen, parsed: dict[bytes, dict[str, str]]) -> tuple[Sample, ...]:
        """The name's series on the page, found from where `seen` says it was last time; the
        samples `seen` holds when the bytes they depend on did not change; `seen` updated for the
        next page. A line whose value does not parse as a float is skipped; label blocks are
        looked up in `parsed`, the extractor's cache."""
        at, walk = self.locate(page, seen.at)
        if at < 0:
            seen.changed = seen.at >= 0
            seen.at, seen.window = -1, None
            return ()
        if seen.same(page, at):
            seen.at, seen.changed = at, False
            return seen.samples
        lines, lo, hi = self.lines(page, at, walk)
        found: list[Sample] = []
        for block, value in lines:
            try:
                number = float(value)
            except ValueError:
                continue
            labels = parsed.get(block)
            if labels is None:
                if len(parsed) >= _LABEL_CACHE_SIZE:
                    parsed.clear()
                labels = parsed[block] = _labels(block)
            found.append(_new_sample(Sample, (labels, number)))
        samples = tuple(found)
        seen.at, seen.samples, seen.changed = at, samples, True
        if lo < 0:
            seen.window = None
        else:
            seen.back, seen.window, seen.to_end = at - lo, page[lo:hi], hi >= len(page)
            seen.from_start = lo == 0
        return samples

    def _search(self, page: bytes, hint: int) -> tuple[int, bool]:
        """The start of a sample line of the name, and whether lines of its group may come before
        it; (-1, False) if the page has none."""
        head = self.head
        at_start = page.startswith(head) and page.startswith(_AFTER_NAME, len(head))
        begin = hint - HINT_SLACK if hint > HINT_SLACK else 0
        if at_start and not begin:
            return 0, False
        at = self._find(page, begin, len(page))
        if at >= 0:
            return at, begin > 0
        if not begin:
            return -1, False
        return (0, False) if at_start else (self._find(page, 0, begin + len(self.needle)), False)

    def _find(self, page: bytes, begin: int, end: int) -> int:
        """The start of the first of the name's sample lines whose newline is in page[begin:end]."""
        needle = self.needle
        at = page.find(needle, begin, end)
        while at >= 0 and not page.startswith(_AFTER_NAME, at + len(needle)):
            at = page.find(needle, at + 1, end)  # a longer name that starts with this one
        return at + 1 if at >= 0 else -1


class _CompiledWanted(_Wanted):
    """`_Wanted` with its search and its read in C (`_promscan`): the same results and hints."""

    __slots__ = ()

    def locate(self, page: bytes, hint: int) -> tuple[int, bool]:
        return _promscan.locate(page, self.needle, hint)

    def read(self, page: bytes, seen: Seen, parsed: dict[bytes, dict[str, str]]) -> tuple[Sample, ...]:
        return _promscan.read(self.needle, self.family, parsed, _labels, Sample, page, seen)

    def reader(self, parsed: dict[bytes, dict[str, str]]) -> Reader:
        return functools.partial(_promscan.read, self.needle, self.family, parsed, _labels, Sample)


PAGE_READER = "the metrics page reader"


class Extractor:
    """Reads the sample lines of a fixed set of metric names without walking the whole page.

    The exposition format puts all the lines of a metric family in one group (HELP and TYPE
    first), so each wanted name is located with `bytes.find` of a newline and the name (a search
    in C), and only its family's group is read: the lines from there that start with the family's
    name (the wanted name less a `_total`, `_count`, ... suffix), comments and blank lines. One
    regex match per line of the group yields its label block and value; label blocks are parsed
    once and cached. A page that repeats a family in a second group, against the format, has only
    the first group found read.

    `bytes.find` still steps through the page byte by byte up to the name, so where each name was
    found last time is kept (`Hints`, one per endpoint: a server's page keeps its layout) and the
    search starts a little before it; a name the page lacks costs one pass over it. `series` reads
    names as they are asked for, so an engine's fallback names (vLLM's old KV-cache gauge) are not
    searched for when its first choice is there.

    A line is `name{labels} value [timestamp]` or `name value [timestamp]`: the label block runs
    to the line's last `}`, whitespace may follow it, and a line whose value does not parse as a
    float is skipped, as prometheus_client's parser would reject it.

    With the C extension (`compiled`) each name's read is one call: the search compares 16 or 32
    bytes at a time (a name the page lacks costs ~1.7 µs on 42 KB, not ~9), and a present
    series costs ~0.8 µs instead of ~2-3."""

    def __init__(self, names: Iterable[str], *, compiled: bool | None = None) -> None:
        """`compiled`: read with the C extension or in Python (the reference); by default with
        the extension when it was built, else in Python, said once a process."""
        if compiled is None:
            compiled = COMPILED
            if not compiled:
                warn_python_fallback(PAGE_READER, "about 2.5x the CPU per page read")
        elif compiled and _promscan is None:
            raise RuntimeError("epp.datalayer._promscan was not built (make install)")
        kind = _CompiledWanted if compiled else _Wanted
        self._wanted = {name: kind(name) for name in sorted(set(names))}
        # Label block -> its labels. A server repeats the same blocks scrape after scrape (and
        # replicas of one model share them), so most are parsed once; the dicts are shared, and
        # read-only. Cleared when full, so changing label values cannot grow it without bound.
        self._labels: dict[bytes, dict[str, str]] = {}
        self._readers = {name: wanted.reader(self._labels) for name, wanted in self._wanted.items()}

    def extract(self, text: str) -> dict[str, Sequence[Sample]]:
        return self.extract_bytes(text.encode("utf-8", "surrogatepass"))

    def extract_bytes(self, page: bytes, hints: Hints | None = None) -> dict[str, Sequence[Sample]]:
        """Every wanted name the page has, with its series."""
        hints = {} if hints is None else hints
        found = {}
        for name in self._wanted:
            series = self.read(page, name, hints)
            if series:
                found[name] = series
        return found

    def series(self, page: bytes, hints: Hints) -> PageSeries:
        """The wanted names' series, each read from the page when first asked for."""
        return PageSeries(self, page, hints)

    def read(self, page: bytes, name: str, hints: Hints) -> Sequence[Sample]:
        """One name's series on the page: empty if the page lacks it or it is not wanted. A
        tuple, as a page whose bytes did not change gives the same one again: no scrape's
        consumer can change another scrape's series."""
        read = self._readers.get(name)
        if read is None:
            return ()
        seen = hints.get(name)
        if seen is None:
            seen = hints[name] = Seen()
        return read(page, seen)

    def same(self, page: bytes, hints: Hints, names: Iterable[str]) -> bool:
        """Whether each of `names` reads on `page` what it read on the endpoint's last page: the
        bytes its read looked at are around its line unchanged (wherever the line now is: values
        before it, a process's CPU time, change length), or it is still absent (a pass over the
        page, so those come last)."""
        absent = []
        for name in names:
            seen, wanted = hints.get(name), self._wanted.get(name)
            if seen is None or wanted is None:
                return False
            if seen.at < 0:
                absent.append(name)
                continue
            at = wanted.locate(page, seen.at)[0]
            if at < 0 or not seen.same(page, at):
                return False
            seen.at = at
        return not any(self.read(page, name, hints) for name in absent)


class PageSeries:
    """One page's wanted series by name, each read when asked for; `asked` lists the names asked
    for, in order (what `Extractor.same` checks on the next page), and `changed` is False while
    each was the series the last page read."""

    __slots__ = ("_hints", "_page", "_readers", "asked", "changed")

    def __init__(self, extractor: Extractor, page: bytes, hints: Hints) -> None:
        self._readers = extractor._readers
        self._page = page
        self._hints = hints
        self.asked: list[str] = []
        self.changed = False

    def get(self, name: str, /) -> Sequence[Sample] | None:
        # `Extractor.read` inlined: an engine asks for five to ten names a page, a Python call
        # each saved (with the C reader, none is left between here and the C)
        self.asked.append(name)
        read = self._readers.get(name)
        if read is None:
            self.changed = True
            return None
        seen = self._hints.get(name)
        if seen is None:
            seen = self._hints[name] = Seen()
        found = read(self._page, seen)
        if seen.changed:
            self.changed = True
        return found or None


def _labels(block: bytes) -> dict[str, str]:
    """The `k="v",...` inside a sample line's braces."""
    text = block.decode("utf-8", "replace")
    if "\\" in text:
        return {k: _unescape(v) for k, v in _LABEL.findall(text)}
    return dict(_LABEL.findall(text))
