"""The scraper's line extractor against prometheus_client's text parser, on generated vLLM, SGLang
and TRT-LLM pages: the same series, labels and values for every wanted name, and the same
endpoint metrics mapped from them."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.engines import BUILTIN_ENGINES, EngineMetrics
from epp.datalayer.promtext import Extractor, Sample

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
def families(draw: st.DrawFn, name: str) -> list[str]:
    kind = draw(st.sampled_from(("gauge", "counter", "histogram", "untyped", None)))
    if kind == "counter" and not name.endswith("_total"):
        name += "_total"
    lines = []
    if kind is not None:
        if draw(st.booleans()):
            lines.append(f"# HELP {name} {_escape(draw(st.text(max_size=10)))}")
        lines.append(f"# TYPE {name} {kind}")
    if kind == "histogram":
        for bound in ("0.1", "1", "+Inf"):
            lines.append(f'{name}_bucket{{le="{bound}"}} {draw(values)}')
        lines += [f"{name}_count {draw(values)}", f"{name}_sum {draw(values)}"]
    else:
        lines += draw(st.lists(sample_lines(name), min_size=1, max_size=3))
    return lines


@st.composite
def pages(draw: st.DrawFn) -> tuple[EngineMetrics, str]:
    engine = BUILTIN_ENGINES[draw(st.sampled_from(sorted(BUILTIN_ENGINES)))]
    wanted = sorted(engine.names())
    # Names the extractor must not take: the wanted ones extended or cut short, and others.
    decoys = [w + "_total" for w in wanted] + [w[:-1] for w in wanted] + ["process_cpu_seconds", "vllm:other"]
    names = draw(st.lists(st.sampled_from(wanted + decoys), unique=True, min_size=1, max_size=8))
    lines = [line for name in names for line in draw(families(name))]
    return engine, "\n".join(lines) + "\n"


def _comparable(samples: dict[str, list[Sample]]) -> dict[str, list[tuple[dict[str, str], str]]]:
    return {n: [(dict(s.labels), repr(float(s.value))) for s in series] for n, series in samples.items()}


def _reference(page: str, wanted: set[str]) -> dict[str, list[Sample]]:
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name in wanted:
                found.setdefault(sample.name, []).append(Sample(sample.labels, float(sample.value)))
    return found


def _mapped(engine: EngineMetrics, samples: dict[str, list[Sample]]) -> object:
    try:
        return engine.read(samples, now=1.0)
    except ValueError as exc:  # a non-finite count or ratio fails the scrape
        return str(exc)


@settings(max_examples=300, deadline=None)
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
