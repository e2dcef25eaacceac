"""Tokenizer stand-in: deterministic across processes, about 4 characters per token, prefix-stable."""

from __future__ import annotations

import random
import subprocess
import sys
import zlib

import pytest

from epp.sim.tokens import (
    _PIECE,
    VOCAB_SIZE,
    output_ids,
    output_text,
    render_chat,
    sequence_seed,
    token_id,
    tokenize,
)

PROSE = (
    "Large language models are served by engines that batch many requests together. Each step "
    "computes one token for every running sequence, and long prompts are split into chunks so that "
    "decoding requests keep making progress while a new prompt is being processed. "
)


def test_same_ids_in_another_process() -> None:
    code = f"from epp.sim.tokens import tokenize; print(tokenize({PROSE!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(tokenize(PROSE))


def test_about_four_characters_per_token() -> None:
    ids = tokenize(PROSE * 10)
    assert 3.5 <= len(PROSE * 10) / len(ids) <= 5.0
    assert all(0 <= i < VOCAB_SIZE for i in ids)


def test_shared_prefix_gives_shared_leading_ids() -> None:
    prefix = PROSE * 3
    a, b = tokenize(prefix + "What is a KV cache?"), tokenize(prefix + "Why does routing matter?")
    base = tokenize(prefix)
    # only the piece at the boundary (here the trailing space joining the next word) can differ
    shared = len(base) - 1
    assert a[:shared] == base[:shared] == b[:shared]
    assert a[shared:] != b[shared:]


def test_chat_template_keeps_system_prompt_prefix() -> None:
    system = ("system", PROSE)
    first = tokenize(render_chat([system, ("user", "first question")]))
    second = tokenize(render_chat([system, ("user", "another one")]))
    common = tokenize(render_chat([system])[: -len("<|start|>assistant\n")])[:-1]
    assert first[: len(common)] == second[: len(common)] == common
    assert len(common) > len(tokenize(PROSE)) - 1
    assert render_chat([("user", "hi")]) == "<|start|>user\nhi<|end|>\n<|start|>assistant\n"


def test_output_text_is_deterministic_words() -> None:
    seed = sequence_seed(tokenize(PROSE), 7)
    words = [output_text(seed, i) for i in range(20)]
    assert words == [output_text(seed, i) for i in range(20)]
    assert all(w.startswith(" ") and w[1:].isalpha() for w in words)
    assert sequence_seed(tokenize(PROSE), 8) != seed


def test_generated_text_tokenizes_back_to_the_ids_it_was_generated_with() -> None:
    """An answer's text, re-tokenized (as a follow-up prompt repeating it is), gives one token
    per generated token with the ids the engine hashed its blocks with."""
    for seed in range(50):
        text = "".join(output_text(seed, i) for i in range(64))
        assert tokenize(text) == output_ids(seed, 0, 64)
        assert tokenize("Question: why?" + text) == tokenize("Question: why?") + output_ids(seed, 0, 64)


def test_plain_word_text_takes_the_shortcut_to_the_same_ids() -> None:
    """Text of short lowercase words has a faster path; it must cut the same pieces."""
    rng = random.Random(2)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(2000):
        longest = rng.choice([5, 7])  # words of six letters and more are two pieces
        words = ["".join(rng.choices(alphabet, k=rng.randint(1, longest))) for _ in range(rng.randint(1, 30))]
        separators = rng.choices([" ", " ", " ", "  ", ", ", "\n", " 7 "], k=len(words))
        text = rng.choice(["", " ", "  "]) + "".join(w + s for w, s in zip(words, separators, strict=True))
        for candidate in (text, text.rstrip(), " ".join(words), " " + " ".join(words)):
            expected = [zlib.crc32(p.encode()) % VOCAB_SIZE for p in _PIECE.findall(candidate)]
            assert tokenize(candidate) == expected


@pytest.mark.parametrize("seed", [0, 12345, 2**32 - 1])
def test_output_ids_are_the_ids_of_the_output_text(seed: int) -> None:
    """`output_ids` looks each word's id up instead of hashing its text; the same ids."""
    assert output_ids(seed, 3, 700) == [token_id(output_text(seed, index)) for index in range(3, 700)]
