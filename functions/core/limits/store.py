"""Where a limit's counters live: this process's memory, or Redis shared by every process.

A store answers one question atomically: may this :class:`Ask` go, and if so, take what it
needs (a request, its reserved tokens, a concurrency slot, its share of the budgets) in the
same step, so concurrent asks can never together pass a limit. :meth:`Store.release` gives
back what an exchange did not use (or charges what it used beyond its reservation) and
frees its slots.

Rates are token buckets that refill continuously (a limit of 60 a minute is one a second,
with bursts up to 60): a refund goes straight back into the bucket, which a fixed or sliding
window of counts cannot take. Budgets are counters per UTC day and month.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import msgspec

MINUTE_MS = 60_000.0
# Counters of a day and a month outlive their period a little (a reservation made just
# before midnight is refunded just after), then go.
DAY_TTL_S = 2 * 86_400
MONTH_TTL_S = 32 * 86_400


class Ask(msgspec.Struct, kw_only=True):
    """What one exchange asks of the limits of its key (``key``, the key's id) and its
    configuration (``config``); a limit of 0 is none. ``tokens``: the reservation.
    ``day``/``month``: the UTC periods its budgets count in (``20261208``, ``202612``),
    fixed at admission so the refund reaches the counter that was charged."""

    key: str
    ticket: str
    tokens: int
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0
    tokens_per_day: int = 0
    tokens_per_month: int = 0
    config: str | None = None
    config_concurrent: int = 0
    day: str = ""
    month: str = ""
    # How long a concurrency slot may stay held if its process dies before releasing it.
    slot_ttl_ms: int = 3_600_000


class Verdict(msgspec.Struct, frozen=True):
    """A store's answer. ``refused``: "" when the ask went, else which limit stopped it
    (``requests``, ``tokens``, ``tokens_too_large``, ``concurrent``,
    ``config_concurrent``, ``day``, ``month``); ``wait_ms``: when a retry may pass.
    ``requests_left`` and ``tokens_left``: the buckets' levels afterwards."""

    refused: str
    wait_ms: int
    requests_left: float
    tokens_left: float


class Store(Protocol):
    async def acquire(self, ask: Ask) -> Verdict: ...

    async def release(self, ask: Ask, refund: int) -> None: ...

    async def close(self) -> None: ...


class _Bucket:
    """A token bucket of ``capacity`` a minute: ``level`` at ``at`` (ms, monotonic)."""

    __slots__ = ("at", "level")

    def __init__(self, level: float, at: float) -> None:
        self.level = level
        self.at = at

    def now(self, capacity: int, at: float) -> float:
        level = self.level + (at - self.at) * capacity / MINUTE_MS
        return capacity if level > capacity else level

    def set(self, level: float, at: float) -> None:
        self.level = level
        self.at = at


class MemoryStore:
    """The counters of one process. Each call runs to its end without awaiting anything,
    so on one event loop it is atomic as it stands. Periods past are dropped as new ones
    start, so memory stays bounded by the keys in use."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._slots: dict[str, int] = {}
        self._spent: dict[str, int] = {}
        self._periods: tuple[str, str] = ("", "")

    async def acquire(self, ask: Ask) -> Verdict:
        return self.acquire_now(ask)

    def acquire_now(self, ask: Ask) -> Verdict:  # noqa: PLR0912 - one check per limit, in order
        at = time.monotonic() * 1000
        if (ask.day, ask.month) != self._periods:
            self._roll(ask.day, ask.month)
        key = ask.key
        rpm, tpm = ask.requests_per_minute, ask.tokens_per_minute
        requests = self._bucket(key, "r", rpm, at) if rpm else None
        tokens = self._bucket(key, "t", tpm, at) if tpm else None
        requests_left = requests.now(rpm, at) if requests is not None else 0.0
        tokens_left = tokens.now(tpm, at) if tokens is not None else 0.0
        refused, wait_ms = "", 0
        slot_key = "k:" + key
        config_key = "c:" + ask.config if ask.config is not None else ""
        day_key, month_key = f"d:{key}", f"m:{key}"
        if ask.max_concurrent and self._slots.get(slot_key, 0) >= ask.max_concurrent:
            refused, wait_ms = "concurrent", 1000
        elif ask.config_concurrent and self._slots.get(config_key, 0) >= ask.config_concurrent:
            refused, wait_ms = "config_concurrent", 1000
        elif rpm and requests_left < 1:
            refused, wait_ms = "requests", math.ceil((1 - requests_left) * MINUTE_MS / rpm)
        elif tpm and ask.tokens > tpm:
            refused = "tokens_too_large"
        elif tpm and tokens_left < ask.tokens:
            refused = "tokens"
            wait_ms = math.ceil((ask.tokens - tokens_left) * MINUTE_MS / tpm)
        elif ask.tokens_per_day and self._spent.get(day_key, 0) + ask.tokens > ask.tokens_per_day:
            refused = "day"
        elif (
            ask.tokens_per_month
            and self._spent.get(month_key, 0) + ask.tokens > ask.tokens_per_month
        ):
            refused = "month"
        if not refused:
            if requests is not None:
                requests_left -= 1
                requests.set(requests_left, at)
            if tokens is not None:
                tokens_left -= ask.tokens
                tokens.set(tokens_left, at)
            if ask.max_concurrent:
                self._slots[slot_key] = self._slots.get(slot_key, 0) + 1
            if ask.config_concurrent:
                self._slots[config_key] = self._slots.get(config_key, 0) + 1
            if ask.tokens_per_day:
                self._spent[day_key] = self._spent.get(day_key, 0) + ask.tokens
            if ask.tokens_per_month:
                self._spent[month_key] = self._spent.get(month_key, 0) + ask.tokens
        return Verdict(refused, wait_ms, requests_left, tokens_left)

    async def release(self, ask: Ask, refund: int) -> None:
        self.release_now(ask, refund)

    def release_now(self, ask: Ask, refund: int) -> None:
        key = ask.key
        if refund and ask.tokens_per_minute:
            at = time.monotonic() * 1000
            tpm = ask.tokens_per_minute
            bucket = self._bucket(key, "t", tpm, at)
            level = bucket.now(tpm, at) + refund
            bucket.set(tpm if level > tpm else level, at)
        if ask.max_concurrent:
            self._free("k:" + key)
        if ask.config_concurrent and ask.config is not None:
            self._free("c:" + ask.config)
        # A refund reaches the period it was reserved in, unless that period is over.
        if refund and ask.tokens_per_day and ask.day == self._periods[0]:
            self._spent[f"d:{key}"] = self._spent.get(f"d:{key}", 0) - refund
        if refund and ask.tokens_per_month and ask.month == self._periods[1]:
            self._spent[f"m:{key}"] = self._spent.get(f"m:{key}", 0) - refund

    async def close(self) -> None:
        return None

    def _bucket(self, key: str, kind: str, capacity: int, at: float) -> _Bucket:
        bucket = self._buckets.get((key, kind))
        if bucket is None:
            bucket = self._buckets[key, kind] = _Bucket(float(capacity), at)
        return bucket

    def _free(self, slot: str) -> None:
        held = self._slots.get(slot, 0) - 1
        if held > 0:
            self._slots[slot] = held
        else:
            self._slots.pop(slot, None)

    def _roll(self, day: str, month: str) -> None:
        previous_day, previous_month = self._periods
        if day != previous_day:
            self._spent = {k: v for k, v in self._spent.items() if not k.startswith("d:")}
        if month != previous_month:
            self._spent = {k: v for k, v in self._spent.items() if not k.startswith("m:")}
        self._periods = (day, month)
