"""Each C extension's fallback: a part whose extension was not built runs its Python version and
says so once a process, naming itself and the cost. Runs whether or not the extensions are built
(the module attribute that holds the extension is patched away)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

import numpy as np
import pytest

from epp.bench import events
from epp.compiled import warn_python_fallback
from epp.datalayer import kvblocks, promtext
from epp.requests import jsontext
from epp.scheduling import scoring
from epp.scheduling.prefix import index
from epp.sim import tokens

PARTS: list[tuple[object, str, object, Callable[[], object], Callable[[object], bool], str]] = [
    (
        index,
        "COMPILED",
        False,
        index.new_prefix_index,
        lambda made: isinstance(made, index.PythonPrefixIndex),
        "the approximate prefix index: its C extension was not built",
    ),
    (
        promtext,
        "COMPILED",
        False,
        lambda: promtext.Extractor(["vllm:num_requests_running", "m_total"]),
        lambda made: all(type(w) is promtext._Wanted for w in made._wanted.values()),  # type: ignore[attr-defined]
        "the metrics page reader: its C extension was not built",
    ),
    (
        kvblocks,
        "_compiled_cbor_fnv_keys",
        None,
        lambda: kvblocks.TokenProcessor(16),
        lambda made: made._compiled is None,  # type: ignore[attr-defined]
        "the precise prefix index's block keys: its C extension was not built",
    ),
    (
        jsontext,
        "_compiled_scan",
        None,
        lambda: jsontext.scan(b'{"a": [[1]]}', {"a": [[1]]}),
        lambda made: made == (False, False),
        "the request body's depth check: its C extension was not built",
    ),
    (
        tokens,
        "_compiled_word_ids",
        None,
        lambda: tokens.tokenize(" ab cde"),
        lambda made: made == [zlib.crc32(piece) % tokens.VOCAB_SIZE for piece in (b" ab", b" cde")],
        "the simulator's tokenizer: its C extension was not built",
    ),
    (
        events,
        "_CompiledEventHeap",
        None,
        events.new_event_queue,
        lambda made: isinstance(made, events.PythonEventHeap),
        "the virtual-time run's event queue: its C extension was not built",
    ),
    (
        scoring,
        "_compiled_weighted_sum",
        None,
        lambda: scoring.weighted_totals([np.array([0.5, 2.0, -1.0])], (2.0,), 3),
        lambda made: made.tolist() == [1.0, 2.0, 0.0],  # type: ignore[attr-defined]
        "a scheduling profile's scores and totals over 128 candidates or more: its C extension was not built",
    ),
]


@pytest.mark.parametrize(("module", "attribute", "missing", "make", "in_python", "said"), PARTS)
def test_without_its_extension_a_part_runs_in_python_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    module: object,
    attribute: str,
    missing: object,
    make: Callable[[], object],
    in_python: Callable[[object], bool],
    said: str,
) -> None:
    monkeypatch.setattr(module, attribute, missing)
    warn_python_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger="epp.compiled"):
        first, second = make(), make()
    assert in_python(first) and in_python(second)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith(said), messages
    assert "same results at about" in messages[0]


def test_a_part_asked_for_in_python_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    warn_python_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger="epp.compiled"):
        kvblocks.TokenProcessor(16, compiled=False)
        promtext.Extractor(["m_total"], compiled=False)
    assert not caplog.records
