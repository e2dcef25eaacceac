"""The simulator tokenizer's words path in C (`_wordtokens.c`) against the regex cut it stands for:
text of short lowercase words, and text that is almost that (a six-letter word, a double or
trailing space, a capital, a digit, a non-ASCII letter, the empty text), which must get None and go
the regex way. Skipped when the extension is not built."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("epp.sim._wordtokens")

from epp.sim._wordtokens import word_ids
from epp.sim.tokens import _PIECE, _WORDS_TEXT, VOCAB_SIZE, _python_word_ids, tokenize

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=5)
near = st.text(alphabet="abcxyzA1é _,\n", max_size=8)  # what the words path must refuse, mostly


def regex_ids(text: str) -> list[int]:
    return [zlib.crc32(piece.encode()) % VOCAB_SIZE for piece in _PIECE.findall(text)]


@settings(max_examples=500, deadline=None)
@given(st.booleans(), st.lists(words, min_size=1, max_size=40))
def test_word_text_gets_the_regex_ids(leading_space: bool, chosen: list[str]) -> None:
    text = (" " if leading_space else "") + " ".join(chosen)
    assert word_ids(text, VOCAB_SIZE) == _python_word_ids(text) == regex_ids(text) == tokenize(text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(words, near), max_size=12).map("".join))
def test_other_text_is_refused_and_tokenized_by_the_regex(text: str) -> None:
    ids = word_ids(text, VOCAB_SIZE)
    if _WORDS_TEXT.fullmatch(text):
        assert ids == regex_ids(text)
    else:
        assert ids is None
    assert tokenize(text) == regex_ids(text)


@pytest.mark.parametrize(
    "text", ["", " ", "  ab", "ab ", "ab  cd", "abcdef", " abcde fghijk", "Ab", "a1", "é", "ab\ncd", "ab\0cd"]
)
def test_almost_word_text_is_refused(text: str) -> None:
    assert word_ids(text, VOCAB_SIZE) is None
    assert tokenize(text) == regex_ids(text)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="vocabulary size must be positive"):
        word_ids("ab", 0)
    with pytest.raises(TypeError):
        word_ids(b"ab", VOCAB_SIZE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vocabulary size must be positive"):
        word_ids("ab", -1)
    with pytest.raises(OverflowError):
        word_ids("ab", 2**63)
    assert word_ids("ab cd", 1) == [0, 0]
    assert word_ids("abcde", 2**32 + 7) == [zlib.crc32(b"abcde")]
