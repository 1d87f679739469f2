"""Toy tokenizer, chat template and deterministic reply text.

Token rules (simple, but consistent everywhere: prompt counts, completion counts, ``/tokenize``
and the streamed chunks all come from the same regex):

- a special marker such as ``<|user|>`` is one token;
- a run of letters/digits (any script except CJK/Hangul/kana) is one token;
- every other non-space code point (a CJK or Hangul syllable, an emoji, a punctuation mark)
  is one token;
- whitespace sticks to the front of the token that follows it; only trailing whitespace is a
  token of its own.

So the tokens of a text always concatenate back to the text, and no code point is ever split.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

# Scripts written without spaces: one token per character, as real BPE vocabularies roughly do.
_CJK = (
    "\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
)
TOKEN_PATTERN = re.compile(rf"\s*(?:<\|[a-z_]+\|>|[^\W{_CJK}]+|\S)|\s+")

ROLE_OPEN = "<|{role}|>"
END = "<|end|>"
ASSISTANT_PROMPT = "<|assistant|>"
BOS = "<|bos|>"

# The words replies are drawn from besides the user's own: several scripts, accents and emoji,
# so multilingual text is exercised on every hop of the gateway.
VOCABULARY: tuple[str, ...] = (
    "the",
    "model",
    "answers",
    "quickly",
    "and",
    "simulated",
    "tokens",
    "flow",
    "through",
    "gateway",
    "stream",
    "hello",
    "world",
    "café",
    "naïve",
    "über",
    "señor",
    "Grüße",
    "안녕하세요",
    "감사합니다",
    "서울",
    "바다",
    "한국어",
    "こんにちは",
    "ありがとう",
    "你好",
    "世界",
    "привет",
    "мир",
    "مرحبا",
    "🙂",
    "🚀",
    "🌊",
    "🎉",
    "✨",
    "👍",
    ",",
    ".",
    "!",
    "?",
)
_ECHO_POOL = 64


def tokenize(text: str) -> list[str]:
    """Split ``text`` into token strings that join back to exactly ``text``."""
    return TOKEN_PATTERN.findall(text)


def count_tokens(text: str) -> int:
    return len(TOKEN_PATTERN.findall(text))


def render_chat(messages: Sequence[tuple[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The prompt a chat template would build from ``(role, text)`` pairs."""
    parts = [f"<|{role}|>{text}{END}" for role, text in messages]
    if add_generation_prompt:
        parts.append(ASSISTANT_PROMPT)
    return "".join(parts)


def reply_seed(*parts: object) -> int:
    """A process-independent seed (``hash()`` is salted per process, so it cannot be used)."""
    key = "\x1f".join(map(repr, parts)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


# A 64-bit LCG (Knuth's MMIX constants): a few integer operations per word, where
# random.Random costs a seeding and several calls; the replies only need to look varied.
_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1442695040888963407
_MASK64 = (1 << 64) - 1
_ECHO_PERCENT = 40
_VOCABULARY_TOKENS = tuple(count_tokens(word) for word in VOCABULARY)


@lru_cache(maxsize=4096)
def generate_reply(seed: int, echo_source: str, length: int) -> tuple[str, ...]:
    """``length`` tokens of text, mixing words of ``echo_source`` with the vocabulary.

    The same arguments give the same tokens in every process, which is what makes replies
    deterministic and a stream equal to its non-streaming twin; a shorter ``length`` gives a
    prefix of a longer one. Cached: tests and benchmarks repeat the same requests.
    """
    echo = echo_source.split(maxsplit=_ECHO_POOL)[:_ECHO_POOL]
    echo_tokens = [count_tokens(word) for word in echo]
    vocabulary, vocabulary_tokens = VOCABULARY, _VOCABULARY_TOKENS
    state = seed & _MASK64
    words: list[str] = []
    produced = 0
    while produced < length:
        state = (state * _LCG_MULTIPLIER + _LCG_INCREMENT) & _MASK64
        draw = state >> 33  # the high bits of an LCG are the random-looking ones
        if echo and draw % 100 < _ECHO_PERCENT:
            at = (draw // 100) % len(echo)
            words.append(echo[at])
            produced += echo_tokens[at]
        else:
            at = (draw // 100) % len(vocabulary)
            words.append(vocabulary[at])
            produced += vocabulary_tokens[at]
    # A word's token count never changes when a space joins it to its neighbours.
    return tuple(tokenize(" ".join(words))[:length])


def apply_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """Cut ``text`` before the earliest stop string, as vLLM does; return it and the stop hit."""
    best = -1
    hit: str | None = None
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop)
        if at != -1 and (best == -1 or at < best):
            best, hit = at, stop
    if hit is None:
        return text, None
    return text[:best], hit


class TokenVocabulary:
    """Ids for token strings, handed out in first-seen order, for ``/tokenize``/``/detokenize``.

    The reply vocabulary is registered first so its ids are the same in every process; other
    strings get ids as they are met. The table is capped so a long run cannot grow without end.
    """

    UNKNOWN = 0
    _CAP = 1 << 20

    def __init__(self) -> None:
        self._pieces: list[str] = ["<|unk|>"]
        self._ids: dict[str, int] = {"<|unk|>": 0}
        for special in (BOS, END, ASSISTANT_PROMPT, "<|system|>", "<|user|>", "<|tool|>"):
            self.id_of(special)
        for word in VOCABULARY:
            for piece in tokenize(word) + tokenize(" " + word):
                self.id_of(piece)

    def id_of(self, piece: str) -> int:
        found = self._ids.get(piece)
        if found is not None:
            return found
        if len(self._pieces) >= self._CAP:
            return self.UNKNOWN
        new_id = len(self._pieces)
        self._pieces.append(piece)
        self._ids[piece] = new_id
        return new_id

    def encode(self, pieces: Sequence[str]) -> list[int]:
        return [self.id_of(piece) for piece in pieces]

    def pieces_of(self, ids: Sequence[int]) -> list[str]:
        """The strings of ``ids``; raises ``IndexError`` on an id never handed out."""
        pieces = self._pieces
        for token_id in ids:
            if not 0 <= token_id < len(pieces):
                raise IndexError(token_id)
        return [pieces[token_id] for token_id in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Join the strings of ``ids``; raises ``IndexError`` on an id never handed out."""
        return "".join(self.pieces_of(ids))
