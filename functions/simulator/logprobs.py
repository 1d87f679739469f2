"""Made-up but consistent log-probabilities, in vLLM's two shapes (chat and legacy completions).

The sampled token is always the most likely one, so it heads every ``top_logprobs`` list; the
alternatives are other words of the reply vocabulary, less likely by half a nat each. Values
depend only on the reply's seed, the choice and the token's position, so a stream and its
non-streaming twin agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from functions.simulator.text import VOCABULARY

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_LOGPROBS = 20  # vLLM's --max-logprobs default
_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_ALTERNATIVES = tuple(" " + word for word in VOCABULARY)


def token_logprob(seed: int, position: int) -> float:
    """A logprob in (-3, 0] for the token at ``position`` of a choice seeded ``seed``."""
    mixed = ((seed ^ (position * _MIX)) * 6364136223846793005) & _MASK64
    return -((mixed >> 40) % 3000) / 1000.0


def _alternatives(piece: str, position: int, count: int) -> list[str]:
    """``count`` tokens other than ``piece`` and each other."""
    out: list[str] = []
    pool = _ALTERNATIVES
    at = position % len(pool)
    while len(out) < count:
        candidate = pool[at % len(pool)]
        at += 1
        if candidate != piece and candidate not in out:
            out.append(candidate)
    return out


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", "replace"))


def chat_logprobs(
    pieces: Sequence[str], *, seed: int, first_position: int, top: int
) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat reply: ``{"content": [...]}`` for ``pieces``, the
    tokens at ``first_position`` onwards (vLLM's ``ChatCompletionLogProbs``)."""
    content: list[dict[str, Any]] = []
    for offset, piece in enumerate(pieces):
        position = first_position + offset
        logprob = token_logprob(seed, position)
        ranked = [{"token": piece, "logprob": logprob, "bytes": _utf8(piece)}] if top else []
        ranked += [
            {"token": other, "logprob": round(logprob - 0.5 * rank, 3), "bytes": _utf8(other)}
            for rank, other in enumerate(_alternatives(piece, position, max(top - 1, 0)), 1)
        ]
        content.append(
            {"token": piece, "logprob": logprob, "bytes": _utf8(piece), "top_logprobs": ranked}
        )
    return {"content": content}


def completion_logprobs(
    tokens: Sequence[str],
    *,
    seed: int,
    first_position: int,
    top: int,
    text_offset: int,
    unscored: int = 0,
) -> dict[str, Any]:
    """``choices[].logprobs`` of a legacy completion (vLLM's ``CompletionLogProbs``).

    The first ``unscored`` tokens have no logprob (the prompt's first token, when echoed);
    each top dict holds the sampled token and ``top - 1`` others, at least the sampled one.
    """
    offsets: list[int] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    at = text_offset
    for offset, token in enumerate(tokens):
        offsets.append(at)
        at += len(token)
        if offset < unscored:
            values.append(None)
            tops.append(None)
            continue
        position = first_position + offset
        logprob = token_logprob(seed, position)
        values.append(logprob)
        ranked = {token: logprob}
        for rank, other in enumerate(_alternatives(token, position, max(top, 1) - 1), 1):
            ranked[other] = round(logprob - 0.5 * rank, 3)
        tops.append(ranked)
    return {
        "text_offset": offsets,
        "token_logprobs": values,
        "tokens": list(tokens),
        "top_logprobs": tops,
    }
