"""OpenAI's rate-limit headers, from a store's verdict.

``x-ratelimit-limit-requests`` / ``-tokens``: the key's per-minute limits;
``x-ratelimit-remaining-*``: what is left after this request (its reservation taken);
``x-ratelimit-reset-*``: until the bucket is full again, as OpenAI writes durations
(``1s``, ``6m0s``, ``450ms``). A trio is sent only for a limit the key has.
"""

from __future__ import annotations

MINUTE_MS = 60_000.0


def duration(ms: float) -> str:
    """``ms`` as OpenAI (Go's ``time.Duration``) writes it: ``20ms``, ``1.5s``, ``6m0s``."""
    ms = round(ms)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    seconds = round(ms / 1000, 3)
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{round(rest, 3):g}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes}m{round(rest, 3):g}s"


def rate_headers(
    requests_per_minute: int, requests_left: float, tokens_per_minute: int, tokens_left: float
) -> list[tuple[bytes, bytes]]:
    """The headers for a key's per-minute limits (0: the key has none of that kind)."""
    headers: list[tuple[bytes, bytes]] = []
    if requests_per_minute:
        headers += _trio(b"requests", requests_per_minute, requests_left)
    if tokens_per_minute:
        headers += _trio(b"tokens", tokens_per_minute, tokens_left)
    return headers


def _trio(kind: bytes, limit: int, left: float) -> list[tuple[bytes, bytes]]:
    remaining = max(0, int(left))
    reset_ms = max(0.0, (limit - left) * MINUTE_MS / limit)
    return [
        (b"x-ratelimit-limit-" + kind, str(limit).encode()),
        (b"x-ratelimit-remaining-" + kind, str(remaining).encode()),
        (b"x-ratelimit-reset-" + kind, duration(reset_ms).encode()),
    ]
