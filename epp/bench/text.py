"""Synthetic prompt text whose length is exact in the simulator's tokens.

The simulator's tokenizer (epp.sim.tokens) makes one token of every run of at most five letters
with its leading space. Text built from words of two to five lowercase letters joined by single
spaces therefore has exactly one token per word, so workloads can state lengths in tokens as
inference-perf does and both engines see those lengths. A vocabulary drawn from the seed keeps
unrelated prompts (other groups, other conversations) from sharing any prefix by accident.
"""

from __future__ import annotations

import random
import string

VOCABULARY_SIZE = 8192
_MIN_LETTERS = 2
_MAX_LETTERS = 5


class TextGenerator:
    """Deterministic word salad from a seed: the same calls in the same order give the same text."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        words: set[str] = set()
        letters = string.ascii_lowercase
        while len(words) < VOCABULARY_SIZE:
            length = self._rng.randint(_MIN_LETTERS, _MAX_LETTERS)
            words.add("".join(self._rng.choices(letters, k=length)))
        self._words = sorted(words)

    def text(self, tokens: int) -> str:
        """`tokens` words joined by spaces, no leading space: exactly `tokens` tokens."""
        return " ".join(self._rng.choices(self._words, k=tokens))

    def continuation(self, tokens: int) -> str:
        """Text to append to other text: a leading space, then exactly `tokens` tokens. Appended to
        text that ends in a letter it adds exactly `tokens` tokens (the join is a token boundary)."""
        return " " + self.text(tokens) if tokens > 0 else ""
