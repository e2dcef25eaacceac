"""The scraper's line extractor against prometheus_client's text parser, on generated vLLM, SGLang
and TRT-LLM pages: the same series, labels and values for every wanted name, and the same
endpoint metrics mapped from them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.engines import BUILTIN_ENGINES, EngineMetrics
from epp.datalayer.promtext import Extractor, MetricSpec, Sample, SeriesByName

# Both page readers, the Python reference and the C one (conftest.page_reader).
pytestmark = pytest.mark.usefixtures("page_reader")

LABEL_NAMES = ("model_name", "engine", "request_type", "kv_cache_block_type", "max_lora", "block_size")
LABEL_VALUES = ("m", "0", "1", "waiting", "scheduled", "fraction", "max", "tokens_per", "", "a,b")
AWKWARD_VALUES = ("\\n", "\\", '"', "\n", "}", "{", "} 1", "=")  # escapes and look-alikes
SPECIAL_VALUES = ("NaN", "+Inf", "-Inf", "0", "-0.0", "1.7e9", "1.5e+06", "3.0", "26000")


def _value_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


values = st.one_of(
    st.sampled_from(SPECIAL_VALUES),
    st.integers(-(10**9), 10**9).map(str),
    st.floats().map(_value_text),
)
# Any text: quotes, backslashes, newlines and braces must survive escaping and the brace search.
label_values = st.one_of(
    st.sampled_from(LABEL_VALUES),
    st.lists(st.sampled_from(AWKWARD_VALUES), max_size=3).map("".join),
    st.text(max_size=12),
)
label_sets = st.dictionaries(
    st.one_of(
        st.sampled_from(LABEL_NAMES),
        st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,6}", fullmatch=True),  # `__` starts reserved names
    ),
    label_values,
    max_size=3,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@st.composite
def sample_lines(draw: st.DrawFn, name: str) -> str:
    labels = draw(label_sets)
    block = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    braces = f"{{{block}}}" if labels or draw(st.booleans()) else ""
    timestamp = draw(st.sampled_from(("", " 1700000000000")))
    return f"{name}{braces} {draw(values)}{timestamp}"


@st.composite
def families(draw: st.DrawFn, name: str) -> tuple[str, list[str]]:
    """A family's lines, and its name (a counter's gains `_total`)."""
    kind = draw(st.sampled_from(("gauge", "counter", "histogram", "untyped", None)))
    if kind == "counter" and not name.endswith("_total"):
        name += "_total"
    family = name.removesuffix("_total")
    lines = []
    if kind is not None:
        if draw(st.booleans()):
            lines.append(f"# HELP {name} {_escape(draw(st.text(max_size=10)))}")
        lines.append(f"# TYPE {name} {kind}")
    if kind == "histogram":
        # Series by series, as prometheus_client writes them: a wanted `_count` or `_sum` has
        # other lines of its family between its own.
        for labels in draw(st.lists(label_sets, min_size=1, max_size=3)):
            block = "".join(f',{k}="{_escape(v)}"' for k, v in labels.items() if k != "le")
            for bound in ("0.1", "1", "+Inf"):
                lines.append(f'{name}_bucket{{le="{bound}"{block}}} {draw(values)}')
            lines += [
                f"{name}_count{{{block[1:]}}} {draw(values)}",
                f"{name}_sum{{{block[1:]}}} {draw(values)}",
            ]
    elif kind == "counter":
        for line in draw(st.lists(sample_lines(name), min_size=1, max_size=3)):
            lines.append(line)
            if draw(st.booleans()):  # a `_created` line after each series
                lines.append(f"{family}_created{line[len(name) :].rsplit(' ', 1)[0]} 1.7e9")
    else:
        lines += draw(st.lists(sample_lines(name), min_size=1, max_size=3))
    if draw(st.booleans()):  # comments and blank lines within a family's group
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(("", "# a comment"))))
    return name, lines


# What a core-metrics-extractor's customMetrics may add to an engine's names: a histogram's count
# and sum, a counter's total (their families' groups hold other sample names between theirs).
CUSTOM = (
    ("count", MetricSpec("vllm:e2e_seconds_count")),
    ("sum", MetricSpec("vllm:e2e_seconds_sum")),
    ("total", MetricSpec("vllm:prompt_tokens_total")),
)


@st.composite
def pages(draw: st.DrawFn) -> tuple[EngineMetrics, str]:
    engine = BUILTIN_ENGINES[draw(st.sampled_from(sorted(BUILTIN_ENGINES)))]
    if draw(st.booleans()):
        engine = dataclasses.replace(engine, custom=CUSTOM)
    wanted = sorted(engine.names() - {spec.name for _, spec in CUSTOM})
    if engine.custom:
        wanted += ["vllm:e2e_seconds", "vllm:prompt_tokens"]  # the custom names' families
    # Names the extractor must not take: the wanted ones extended or cut short, and others.
    decoys = [w + "_total" for w in wanted] + [w[:-1] for w in wanted] + ["process_cpu_seconds", "vllm:other"]
    names = draw(st.lists(st.sampled_from(wanted + decoys), unique=True, min_size=1, max_size=8))
    lines, seen = [], set()
    for name in names:
        family, family_lines = draw(families(name))
        if family not in seen:  # a family is one group (two would be a malformed page)
            seen.add(family)
            lines += family_lines
    return engine, "\n".join(lines) + "\n"


def _comparable(samples: Mapping[str, Sequence[Sample]]) -> dict[str, list[tuple[dict[str, str], str]]]:
    return {n: [(dict(s.labels), repr(float(s.value))) for s in series] for n, series in samples.items()}


def _reference(page: str, wanted: set[str]) -> dict[str, list[Sample]]:
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name in wanted:
                found.setdefault(sample.name, []).append(Sample(sample.labels, float(sample.value)))
    return found


def _mapped(engine: EngineMetrics, samples: SeriesByName) -> object:
    try:
        return engine.read(samples, now=1.0)
    except ValueError as exc:  # a non-finite count or ratio fails the scrape
        return str(exc)


@settings(max_examples=150, deadline=None)
@given(pages())
def test_extractor_agrees_with_prometheus_client(case: tuple[EngineMetrics, str]) -> None:
    engine, page = case
    wanted = engine.names()
    reference = _reference(page, wanted)
    extracted = Extractor(wanted).extract(page)
    assert _comparable(extracted) == _comparable(reference)
    assert repr(_mapped(engine, extracted)) == repr(_mapped(engine, reference))


@settings(max_examples=100, deadline=None)
@given(pages())
def test_bytes_and_repeated_pages_read_the_same(case: tuple[EngineMetrics, str]) -> None:
    """The label cache must not leak one page's labels into the next."""
    engine, page = case
    extractor = Extractor(engine.names())
    first = _comparable(extractor.extract(page))
    assert _comparable(extractor.extract_bytes(page.encode())) == first
    assert _comparable(Extractor(engine.names()).extract(page)) == first


@settings(max_examples=80, deadline=None)
@given(st.lists(pages(), min_size=2, max_size=4), st.data())
def test_where_series_were_last_time_does_not_change_what_is_read(
    cases: list[tuple[EngineMetrics, str]], data: st.DataObject
) -> None:
    """An endpoint's hints, left by its earlier pages (whatever they were), only speed the search:
    each page reads as it does with none, lazily or all at once."""
    engine = cases[0][0]
    extractor, hints = Extractor(engine.names()), {}
    for _, page in cases:
        body = page.encode()
        if data.draw(st.booleans()):  # and the page shifted, as values change length
            body = data.draw(st.sampled_from((b"", b"#" * 700 + b"\n", b"x 1\n" * 400))) + body
        fresh = Extractor(engine.names()).extract_bytes(body)
        assert _comparable(extractor.extract_bytes(body, hints)) == _comparable(fresh)
        lazily = extractor.series(body, hints)
        assert _comparable({n: s for n in engine.names() if (s := lazily.get(n))}) == _comparable(fresh)
        assert repr(_mapped(engine, extractor.series(body, hints))) == repr(_mapped(engine, fresh))


@st.composite
def edits(draw: st.DrawFn, page: bytes) -> bytes:
    """The page as the same server might serve it next: unchanged, one line's value changed (to
    a longer or shorter one), a line removed, or one copied next to itself or elsewhere."""
    lines = page.split(b"\n")
    at = draw(st.integers(0, len(lines) - 1))
    line = lines[at]
    edit = draw(st.sampled_from(("same", "value", "remove", "copy", "move")))
    if edit == "value" and b" " in line and not line.startswith(b"#"):
        lines[at] = line[: line.rindex(b" ") + 1] + draw(values).encode()
    elif edit == "remove":
        del lines[at]
    elif edit == "copy":
        lines.insert(at, line)
    elif edit == "move":
        lines.insert(draw(st.integers(0, len(lines))), lines.pop(at))
    return b"\n".join(lines)


@settings(max_examples=100, deadline=None)
@given(pages(), st.data())
def test_series_read_last_time_are_replayed_only_when_the_page_reads_the_same(
    case: tuple[EngineMetrics, str], data: st.DataObject
) -> None:
    """Page after page of one server, each an edit of the one before: what the last page read
    left (replayed where its bytes are unchanged) never changes what a page reads, and the
    whole-page check says "same" only when every name reads as before."""
    engine, page = case
    extractor, hints = Extractor(engine.names()), {}
    body = page.encode()
    names = sorted(engine.names())
    last = _comparable(extractor.extract_bytes(body, hints))
    for _ in range(4):
        body = data.draw(edits(body))
        fresh = _comparable(Extractor(engine.names()).extract_bytes(body))
        same = extractor.same(body, hints, names)
        replayed = _comparable(extractor.extract_bytes(body, hints))
        if _one_group_per_family(body):  # else which group is "first" depends on where one looks
            assert replayed == fresh
            assert not same or fresh == last
        last = replayed


def _one_group_per_family(page: bytes) -> bool:
    """Whether the page keeps each family's lines in one group, as the format requires (an edit
    that moves or copies a line elsewhere can make a second group)."""
    try:
        families = [family.name for family in text_string_to_metric_families(page.decode())]
    except ValueError:
        return False
    return len(families) == len(set(families))
