"""What an endpoint's last page left (`Seen`): a series whose bytes did not change is not parsed
again, and any change that matters to it, wherever on the page, is read."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import pytest

from epp.datalayer.engines import BUILTIN_ENGINES
from epp.datalayer.promtext import Extractor, Hints, Sample

# Both page readers, the Python reference and the C one (conftest.page_reader).
pytestmark = pytest.mark.usefixtures("page_reader")

ENGINE = BUILTIN_ENGINES["vllm"]
PAGE = b"""\
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.5
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",num_gpu_blocks="26000"} 1.0
"""
WAITING = "vllm:num_requests_waiting"


def _values(samples: Mapping[str, Sequence[Sample]]) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {name: [(dict(s.labels), s.value) for s in series] for name, series in samples.items()}


def _read_as_fresh(extractor: Extractor, hints: Hints, page: bytes) -> dict[str, Sequence[Sample]]:
    """The page read with the endpoint's hints, checked against a read with none."""
    read = extractor.extract_bytes(page, hints)
    assert _values(read) == _values(Extractor(ENGINE.names()).extract_bytes(page))
    return read


def test_an_unchanged_page_returns_the_series_read_last_time() -> None:
    extractor, hints = Extractor(ENGINE.names()), {}
    _read_as_fresh(extractor, hints, PAGE)  # found by searching
    second = _read_as_fresh(extractor, hints, PAGE)  # read where the first page had them
    third = _read_as_fresh(extractor, hints, PAGE)
    assert all(third[name] is second[name] for name in second)
    assert extractor.same(PAGE, hints, sorted(ENGINE.names()))


def test_a_consumer_cannot_change_an_unchanged_pages_series_for_the_scrapes_before_or_after() -> None:
    """A replayed read hands out the series the last read parsed: what one scrape's consumer does
    to it must not reach an earlier scrape's result or the next scrape's."""
    extractor, hints = Extractor(ENGINE.names()), {}
    earlier = extractor.read(PAGE, WAITING, hints)
    replayed = extractor.read(PAGE, WAITING, hints)
    with contextlib.suppress(TypeError):  # a consumer trying to change what it was given
        replayed[0] = Sample({}, 99.0)  # type: ignore[index]
    expected = [({"engine": "0", "model_name": "m"}, 3.0)]
    assert [(dict(s.labels), s.value) for s in earlier] == expected
    assert [(dict(s.labels), s.value) for s in extractor.read(PAGE, WAITING, hints)] == expected
    assert _values(extractor.extract_bytes(PAGE, hints))[WAITING] == expected


def test_a_page_where_only_one_needed_value_changes() -> None:
    """The changed series is read again; the others, though they moved (the value is longer),
    are the series read last time."""
    extractor, hints = Extractor(ENGINE.names()), {}
    _read_as_fresh(extractor, hints, PAGE)
    before = _read_as_fresh(extractor, hints, PAGE)
    changed = PAGE.replace(b'model_name="m"} 12.0', b'model_name="m"} 131.0')
    assert not extractor.same(changed, hints, sorted(ENGINE.names()))
    after = _read_as_fresh(extractor, hints, changed)
    assert after["vllm:num_requests_running"][0].value == 131.0
    assert all(after[name] is before[name] for name in before if name != "vllm:num_requests_running")
    assert ENGINE.read(after, 0).running_requests_size == 131
    assert ENGINE.read(after, 0).waiting_queue_size == 3


def test_a_change_next_to_a_series_that_joins_its_group_is_read() -> None:
    """Lines of the same family before or after the one read last time, a blank line or a comment
    between them: the group is read again."""
    line = b'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
    other = b'vllm:num_requests_waiting{engine="1",model_name="m"} 5.0\n'
    extractor, hints = Extractor(ENGINE.names()), {}
    _read_as_fresh(extractor, hints, PAGE)
    _read_as_fresh(extractor, hints, PAGE)
    for page in (
        PAGE.replace(line, line + other),
        PAGE.replace(line, other + line),
        PAGE.replace(line, line + b"# a comment\n" + other),
        PAGE.replace(line, line + b"\n" + other),
        PAGE,
    ):
        read = _read_as_fresh(extractor, hints, page)
        assert len(read[WAITING]) == (1 if page == PAGE else 2)


def test_series_at_the_page_edges() -> None:
    """The page's first line (nothing before it to compare) and its last (nothing after it)."""
    first = b'vllm:num_requests_waiting{model_name="m"} 3.0\n'
    last = b'vllm:kv_cache_usage_perc{model_name="m"} 0.5'
    page = first + b"# TYPE vllm:kv_cache_usage_perc gauge\n" + last
    extractor, hints = Extractor(ENGINE.names()), {}
    for following in (
        page,
        page,
        page + b"\n",
        page + b'\nvllm:kv_cache_usage_perc{model_name="n"} 0.7',
        b'vllm:num_requests_waiting{model_name="n"} 4.0\n' + page,
        page,
        page.replace(b"0.5", b"0.25"),
    ):
        _read_as_fresh(extractor, hints, following)


def test_a_series_that_appears_is_found_where_it_was_absent() -> None:
    extractor, hints = Extractor(ENGINE.names()), {}
    _read_as_fresh(extractor, hints, PAGE)
    _read_as_fresh(extractor, hints, PAGE)
    names = sorted(ENGINE.names())
    assert extractor.same(PAGE, hints, names)
    lora = b'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a",waiting_lora_adapters=""} 1.7e9\n'
    assert not extractor.same(PAGE + lora, hints, names)
    assert ENGINE.read(_read_as_fresh(extractor, hints, PAGE + lora), 0).active_models == {"a"}


def test_a_page_whose_series_moved_reads_the_same() -> None:
    """An idle server's counters above the wanted series change length (its CPU time): the
    series are where they were but for the shift, and read as before."""
    extractor, hints = Extractor(ENGINE.names()), {}
    _read_as_fresh(extractor, hints, PAGE)
    before = _read_as_fresh(extractor, hints, PAGE)
    moved = PAGE.replace(b"process_cpu_seconds_total 1.5", b"process_cpu_seconds_total 1.625")
    assert extractor.same(moved, hints, sorted(ENGINE.names()))
    after = _read_as_fresh(extractor, hints, moved)
    assert all(after[name] is before[name] for name in before)
    assert extractor.same(PAGE, hints, sorted(ENGINE.names()))


def test_a_group_read_from_the_pages_start_is_not_replayed_further_in() -> None:
    """The walk back over the group stopped at the page's first byte (comments are the group's):
    a later page with more of the family's lines before it read only the old line, where a fresh
    read found both."""
    waiting = b'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
    comments = b"".join(b"# note %03d ..............................\n" % i for i in range(30))
    rest = PAGE[PAGE.index(b"# HELP vllm:kv_cache_usage_perc") :]  # no other group of the family
    page = comments + waiting + rest
    extractor, hints = Extractor(ENGINE.names()), {}
    _read_as_fresh(extractor, hints, page)
    _read_as_fresh(extractor, hints, page)
    before = waiting.replace(b'engine="0"', b'engine="1"').replace(b"3.0", b"1.0")
    later = _read_as_fresh(extractor, hints, before + page)
    assert [s.value for s in later[WAITING]] == [1.0, 3.0]
