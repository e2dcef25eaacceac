"""Deterministic stand-in for a real tokenizer, plus the text the simulator "generates".

The simulator needs token counts and token ids that behave like a BPE tokenizer's where routing
cares: about 4 characters of English per token, identical ids in every process (so no built-in
``hash()``, which is salted per process), and prefix stability (two texts that share a prefix share
their leading token ids, which is what makes prefix caching and prefix-aware routing work).

Text is cut into pieces by one compiled regex: a letter run of at most ``WORD_CHUNK`` letters with
its leading space, a run of up to 3 digits, one or two punctuation characters, or a whitespace run.
A piece's id is its CRC-32 modulo the vocabulary size. For ordinary English this yields 4.0 to 4.5
characters per token, close to Llama 3 / GPT-4 class tokenizers (about 4 to 4.3 on English prose);
long words split into more pieces than a trained BPE would and very common short words the same.
Code, numbers and non-Latin scripts deviate more. Only the piece containing the first differing
character can differ between two texts with a common prefix.
"""

from __future__ import annotations

import re
import zlib
from array import array
from collections.abc import Sequence

from epp.compiled import warn_python_fallback

try:  # the words path in C (_wordtokens.c): one pass checks and hashes the text
    from epp.sim._wordtokens import word_ids as _compiled_word_ids
except ImportError:  # no C compiler at install: the same ids in Python
    _compiled_word_ids = None  # type: ignore[assignment]

VOCAB_SIZE = 128_256
"""Llama 3's vocabulary size; ids are uniform in [0, VOCAB_SIZE)."""

WORD_CHUNK = 5
_PIECE = re.compile(rf"\s?[^\W\d_]{{1,{WORD_CHUNK}}}|\s?\d{{1,3}}|\s?(?:[^\w\s]|_){{1,2}}|\s+")

CHAT_ROLE_OPEN = "<|start|>"
CHAT_ROLE_CLOSE = "<|end|>\n"


_WORDS_TEXT = re.compile(r" ?[a-z]{1,5}(?: [a-z]{1,5})*")
"""Short lowercase words between single spaces: each word is one piece with its leading space."""
_SPACE_CRC = zlib.crc32(b" ")


def tokenize(text: str) -> list[int]:
    """Token ids of ``text``; same result in every process and on every run.

    Text of short lowercase words between single spaces (what the benchmarks generate) is cut at
    the spaces instead, into the same pieces, and each word's CRC continues that of its leading
    space: in C one pass over the text, in Python half the cost of the regex."""
    if _compiled_word_ids is not None:
        ids = _compiled_word_ids(text, VOCAB_SIZE)
        if ids is not None:
            return ids
    else:
        warn_python_fallback("the simulator's tokenizer", "about 20 us more per 100-word text")
        if _WORDS_TEXT.fullmatch(text):
            return _python_word_ids(text)
    return [zlib.crc32(piece.encode()) % VOCAB_SIZE for piece in _PIECE.findall(text)]


def token_pieces(text: str) -> list[str]:
    """The text of each of ``text``'s tokens, in order: together they are the text (every
    character falls in one piece), and there are as many as ``tokenize`` gives ids."""
    return _PIECE.findall(text)


def _python_word_ids(text: str) -> list[int]:
    """The words path in Python (text known to match ``_WORDS_TEXT``)."""
    crc = zlib.crc32
    first, *words = text.encode().split(b" ")
    ids = [crc(word, _SPACE_CRC) % VOCAB_SIZE for word in words]
    if first:  # no leading space
        ids.insert(0, crc(first) % VOCAB_SIZE)
    return ids


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """Apply the simulator's fixed chat template: each (role, content) becomes
    ``<|start|>role\\ncontent<|end|>\\n`` and an open assistant turn is appended, so a shared system
    prompt renders to a shared text prefix and therefore a shared token prefix."""
    turns = [f"{CHAT_ROLE_OPEN}{role}\n{content}{CHAT_ROLE_CLOSE}" for role, content in messages]
    turns.append(f"{CHAT_ROLE_OPEN}assistant\n")
    return "".join(turns)


# A fixed vocabulary of common English words of at most WORD_CHUNK letters; generated text draws
# from it deterministically. Each word is one piece of the tokenizer with its leading space, so
# an answer's text tokenizes back to the ids its tokens had (`output_ids`): a follow-up prompt
# that repeats it hashes to the blocks the engine cached while generating it.
_WORD_LIST = (
    "the of and to in is was for on that with as by at from his it an were are which this be or has "
    "had not first one their its new after but who they two her she been other when time there into "
    "more may years over only year most would world city some where later three state such then "
    "used made known under many while part team these than film born south war being both well "
    "north high long about game four group could music river area since early each small same work "
    "life until name album large club also final water power light model order value place point "
    "house right data local field cache token block route queue batch"
)
_WORDS: tuple[str, ...] = tuple(_WORD_LIST.split())
_WORD_STRIDE = 7919  # a prime: token i of a sequence is word (seed + i * stride) mod the list's length


def output_text(seed: int, index: int, rank: int = 0) -> str:
    """Text of generated token ``index`` of a sequence seeded by ``seed``: one word with a leading
    space, so a client that re-tokenizes the output gets about one token per generated token.
    ``rank`` > 0: the rank-th likeliest alternative at that position (a different word each)."""
    return " " + _WORDS[(seed + index * _WORD_STRIDE + rank) % len(_WORDS)]


def token_id(piece: str) -> int:
    """The id ``tokenize`` gives a text that is one piece (a generated token's text: one word
    with its leading space, or one piece of a tool call)."""
    return zlib.crc32(piece.encode()) % VOCAB_SIZE


# The id of each word's piece (its leading space included), so a generated token's id is one
# lookup: the ids of every generated token, hashed into the engine's blocks, made a text and a
# CRC a token (7.5 of 56 s of a 20,000-request virtual run at 200 endpoints).
_WORD_IDS: tuple[int, ...] = tuple(token_id(" " + word) for word in _WORDS)


def output_ids(seed: int, start: int, stop: int) -> list[int]:
    """Ids of generated tokens ``start`` to ``stop`` of a sequence seeded by ``seed``: those of
    their ``output_text``, one a token."""
    ids, count = _WORD_IDS, len(_WORD_IDS)
    return [ids[(seed + index * _WORD_STRIDE) % count] for index in range(start, stop)]


def sequence_seed(token_ids: Sequence[int], seed: int) -> int:
    """A stable per-sequence seed derived from the prompt and the server seed, so the same request
    to the same server produces the same output text and length (like greedy decoding)."""
    return zlib.crc32(array("I", token_ids[-64:]).tobytes(), seed & 0xFFFFFFFF)
