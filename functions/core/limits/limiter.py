"""The limits, as the send path's hooks: reserve at ``admit``, reconcile at ``reconcile``.

Every door sends through ``ChatService``, which calls both once per exchange, so every
door is limited alike. At admission an exchange reserves, atomically in its store, one
request, a concurrency slot (its key's, its configuration's) and its tokens: the prompt's
estimated size plus the most the reply may use (``max_tokens``, else the configuration's,
else ``SWITCHBOARD_LIMIT_RESERVE_MAX_TOKENS``). A refusal is a 429 before anything is
stored or sent. When the exchange ends, the difference between the reservation and what
vLLM counted (prompt and completion tokens, as stored with the reply; a reply cut short
is charged what was generated up to the cut) is refunded, or charged when it used more,
and the slots are freed.

The prompt's size is estimated at four characters a token (plus four a message for the
chat template), which is close for English and code with the tokenizers vLLM serves and
is corrected at reconcile either way. A chat send's stored history is part of its prompt
but only the claim reads it, after admission: when the key has a token limit, its size
is taken from the conversation's last recorded reply (its prompt and completion tokens,
exact counts from vLLM, which is the history the next prompt repeats), one indexed read
before anything is stored. Without it, concurrent sends in long conversations would
reserve a fraction of what they spend and could together pass a budget.

Where counters live (:mod:`~functions.core.limits.store`): this process's memory, or
Redis (``SWITCHBOARD_RATE_LIMIT_URL``). If Redis does not answer within
``SWITCHBOARD_RATE_LIMIT_TIMEOUT_S``, the limiter logs it once, counts it, and enforces
each limit divided by the number of live processes (the ``process_lease`` table) in
memory, trying Redis again every second in the background; it returns to the shared
counters as soon as Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.chat.exchanges import upstream_request
from functions.core.db.sql import fetch
from functions.core.db.tables import ProcessLease
from functions.core.keys.schemas import KeyLimits
from functions.core.keys.service import key_limits
from functions.core.limits.errors import QuotaExceededError, RateLimitedError
from functions.core.limits.headers import rate_headers
from functions.core.limits.store import Ask, MemoryStore, Store, Verdict
from functions.core.llm.errors import LLMError
from functions.core.logging import get_logger, note_response_headers
from functions.core.metrics import (
    RATE_LIMIT_DEGRADED_CHECKS,
    RATE_LIMIT_REFUSALS,
    RATE_LIMIT_STORE_ERRORS,
    RATE_LIMIT_STORE_UP,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from functions.core.chat.hooks import Admission
    from functions.core.llm.client import LLMClient
    from functions.core.messages.schemas import MessageOut
    from functions.core.settings import Settings

log = get_logger(__name__)

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
# How long a key's limits are remembered: a change by an admin applies within this.
KEY_LIMITS_TTL_S = 5.0
# While Redis is down: how often it is tried again, how often live processes are counted.
PROBE_INTERVAL_S = 1.0
PROCESS_COUNT_INTERVAL_S = 10.0
_NO_LIMITS = KeyLimits()


def estimate_tokens(chars: int, messages: int) -> int:
    """A prompt's tokens, estimated from its characters (see the module docstring)."""
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages


class _Held(msgspec.Struct):
    """An admitted exchange's reservation: what it asked, where, its prompt's estimate."""

    ask: Ask
    store: Store
    prompt_tokens: int


class Limiter:
    """The runtime's limits (an ``ExchangeHooks``). ``shared``: the Redis store, or None to
    keep every counter in this process."""

    def __init__(
        self, settings: Settings, shared: Store | None = None, *, llm: LLMClient | None = None
    ) -> None:
        self._settings = settings
        # Counts a whole prompt exactly (SWITCHBOARD_LIMIT_PROMPT_TOKENS=tokenize).
        self._counter = llm if settings.limit_prompt_tokens == "tokenize" else None
        self._defaults = KeyLimits(
            requests_per_minute=settings.limit_default_requests_per_minute,
            tokens_per_minute=settings.limit_default_tokens_per_minute,
            max_concurrent=settings.limit_default_max_concurrent,
            tokens_per_day=settings.limit_default_tokens_per_day,
            tokens_per_month=settings.limit_default_tokens_per_month,
        )
        self._shared = shared
        # The store when none is shared; while Redis is down, the fallback.
        self._memory = MemoryStore()
        self._degraded = False
        self._live_processes = 1
        # How many processes share a limit while the store is down (a test swaps it).
        self.count_live_processes: Callable[[], Awaitable[int]] = _live_processes
        self._counted_at = 0.0
        self._book: dict[uuid.UUID, tuple[KeyLimits, float]] = {}
        self._held: dict[int, _Held] = {}
        self._probe: asyncio.Task[None] | None = None
        self._slot_ttl_ms = int(
            (settings.llm_total_timeout_s + settings.send_lock_timeout_s + 60) * 1000
        )
        # Set in every process, so the series an alert reads always exists: a process with
        # no shared store reports its in-memory one, which always answers.
        RATE_LIMIT_STORE_UP.labels("redis" if shared is not None else "memory").set(1)

    @classmethod
    def from_settings(cls, settings: Settings, llm: LLMClient | None = None) -> Limiter:
        if settings.rate_limit_url is None:
            return cls(settings, llm=llm)
        from functions.core.limits.redis_store import RedisStore

        store = RedisStore.from_url(settings.rate_limit_url, settings.rate_limit_timeout_s)
        return cls(settings, store, llm=llm)

    @property
    def shared(self) -> bool:
        return self._shared is not None

    @property
    def degraded(self) -> bool:
        """Whether the shared store is unreachable and this process enforces its share."""
        return self._degraded

    def forget(self, key_id: uuid.UUID) -> None:
        """Read ``key_id``'s limits again on its next send (they were just changed here)."""
        self._book.pop(key_id, None)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._shared is not None:
            await self._shared.close()

    async def admit(self, admission: Admission) -> None:
        limits = await self._limits(admission.owner)
        config_cap = admission.config_max_concurrent or 0
        if limits is _NO_LIMITS and not config_cap:
            return
        counts_tokens = bool(
            limits.tokens_per_minute or limits.tokens_per_day or limits.tokens_per_month
        )
        prompt = (
            await self._counted(admission)
            if counts_tokens and self._counter is not None
            else estimate_tokens(admission.chars, admission.turns)
        )
        if admission.history and counts_tokens and admission.conversation_id is not None:
            prompt += await _history_tokens(admission.conversation_id)
        reply = admission.choices * (
            admission.max_tokens
            or admission.config_max_tokens
            or self._settings.limit_reserve_max_tokens
        )
        now = datetime.now(UTC)
        ask = Ask(
            key=str(admission.owner),
            ticket=uuid.uuid4().hex,
            tokens=prompt + reply if counts_tokens else 0,
            requests_per_minute=limits.requests_per_minute or 0,
            tokens_per_minute=limits.tokens_per_minute or 0,
            max_concurrent=limits.max_concurrent or 0,
            tokens_per_day=limits.tokens_per_day or 0,
            tokens_per_month=limits.tokens_per_month or 0,
            config=admission.config if config_cap else None,
            config_concurrent=config_cap,
            day=f"{now:%Y%m%d}",
            month=f"{now:%Y%m}",
            slot_ttl_ms=self._slot_ttl_ms,
        )
        store, verdict = await self._acquire(ask)
        headers = rate_headers(
            ask.requests_per_minute,
            verdict.requests_left,
            ask.tokens_per_minute,
            verdict.tokens_left,
        )
        if verdict.refused:
            RATE_LIMIT_REFUSALS.labels(verdict.refused).inc()
            raise _refusal(ask, verdict, headers, prompt, reply)
        self._held[id(admission)] = _Held(ask, store, prompt)
        if headers:
            note_response_headers(headers)

    async def reconcile(
        self,
        admission: Admission,
        reply: MessageOut | None,
        *,
        generated: bool = True,
        others: Sequence[MessageOut] = (),
    ) -> None:
        held = self._held.pop(id(admission), None)
        if held is None:
            return
        ask = held.ask
        if not ask.tokens or not generated:
            used = 0
        elif reply is None:
            # An exchange whose usage nothing recorded: charged what it reserved.
            used = ask.tokens
        elif reply.usage is not None:
            # With n > 1, each further choice's usage is its own completion tokens.
            used = sum(
                (r.usage.prompt_tokens + r.usage.completion_tokens) if r.usage else 0
                for r in (reply, *others)
            )
        else:
            # A reply cut before vLLM counted it: the prompt's estimate and what arrived.
            used = held.prompt_tokens + estimate_tokens(len(reply.content), 0)
        try:
            await held.store.release(ask, ask.tokens - used)
        except Exception as exc:
            # The shared store went away: its slots expire on their own, the refund is lost
            # (the key is charged its reservation, never less than it used).
            self._store_failed(exc)

    async def _counted(self, admission: Admission) -> int:
        """The prompt's tokens as the upstream counts them, when the whole prompt is known
        (else, or if the upstream cannot say in time, the estimate)."""
        counter, prompt, model = self._counter, admission.prompt, admission.model
        if counter is None or prompt is None or model is None:
            return estimate_tokens(admission.chars, admission.turns)
        try:
            return await counter.count_prompt_tokens(
                model,
                upstream_request(prompt, None, model=model).messages,
                timeout_s=self._settings.llm_connect_timeout_s,
            )
        except LLMError as exc:
            log.warning("limits.tokenize_failed", model=model, error=exc.message)
            return estimate_tokens(admission.chars, admission.turns)

    async def _limits(self, key_id: uuid.UUID) -> KeyLimits:
        now = time.monotonic()
        entry = self._book.get(key_id)
        if entry is not None and entry[1] > now:
            return entry[0]
        own = await key_limits(key_id) or _NO_LIMITS
        merged = KeyLimits(
            **{
                field: value if value is not None else getattr(self._defaults, field)
                for field, value in msgspec.structs.asdict(own).items()
            }
        )
        limits = _NO_LIMITS if merged == _NO_LIMITS else merged
        if len(self._book) > 10_000:
            self._book.clear()
        self._book[key_id] = (limits, now + KEY_LIMITS_TTL_S)
        return limits

    async def _acquire(self, ask: Ask) -> tuple[Store, Verdict]:
        shared = self._shared
        if shared is not None and not self._degraded:
            try:
                return shared, await shared.acquire(ask)
            except Exception as exc:
                self._store_failed(exc)
        if shared is None:
            return self._memory, self._memory.acquire_now(ask)
        RATE_LIMIT_DEGRADED_CHECKS.inc()
        await self._count_processes()
        return self._memory, self._memory.acquire_now(_share(ask, self._live_processes))

    def _store_failed(self, exc: BaseException) -> None:
        RATE_LIMIT_STORE_ERRORS.inc()
        if self._degraded:
            return
        self._degraded = True
        self._counted_at = 0.0
        RATE_LIMIT_STORE_UP.labels("redis").set(0)
        log.error(
            "limits.store_unavailable",
            error=f"{type(exc).__name__}: {exc}",
            action="each limit is enforced in this process, divided by the live processes, "
            "until the store answers again",
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._wait_for_store(), name="switchboard-limits")

    async def _wait_for_store(self) -> None:
        shared = self._shared
        assert shared is not None
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                await shared.ping()  # type: ignore[attr-defined]
            except Exception:  # still down: try again
                RATE_LIMIT_STORE_ERRORS.inc()
                continue
            self._degraded = False
            RATE_LIMIT_STORE_UP.labels("redis").set(1)
            log.warning("limits.store_restored", processes=self._live_processes)
            return

    async def _count_processes(self) -> None:
        now = time.monotonic()
        if now - self._counted_at < PROCESS_COUNT_INTERVAL_S:
            return
        self._counted_at = now
        with contextlib.suppress(Exception):
            self._live_processes = max(1, await self.count_live_processes())


async def _live_processes() -> int:
    """Serving processes whose lease has not lapsed (this one included)."""
    live = await ProcessLease.count().where(ProcessLease.expires_at > datetime.now(UTC))
    return int(live)


def _share(ask: Ask, processes: int) -> Ask:
    """``ask`` with each of its key's limits divided among ``processes`` (at least 1)."""
    if processes <= 1:
        return ask

    def part(limit: int) -> int:
        return max(1, limit // processes) if limit else 0

    return msgspec.structs.replace(
        ask,
        requests_per_minute=part(ask.requests_per_minute),
        tokens_per_minute=part(ask.tokens_per_minute),
        max_concurrent=part(ask.max_concurrent),
        tokens_per_day=part(ask.tokens_per_day),
        tokens_per_month=part(ask.tokens_per_month),
        config_concurrent=part(ask.config_concurrent),
    )


async def _history_tokens(conversation_id: uuid.UUID) -> int:
    """The tokens of a conversation's history as its last recorded reply counted them."""
    rows = await fetch(
        "SELECT prompt_tokens, completion_tokens FROM message WHERE conversation = {} "
        "AND role = 'assistant' AND prompt_tokens IS NOT NULL ORDER BY seq DESC LIMIT 1",
        conversation_id,
    )
    if not rows:
        return 0
    return int(rows[0]["prompt_tokens"] or 0) + int(rows[0]["completion_tokens"] or 0)


_PER_MINUTE = {"requests": "requests_per_minute", "tokens": "tokens_per_minute"}


def _refusal(
    ask: Ask, verdict: Verdict, headers: list[tuple[bytes, bytes]], prompt: int, reply: int
) -> RateLimitedError | QuotaExceededError:
    reason = verdict.refused
    wait_s = math.ceil(verdict.wait_ms / 1000)
    reserving = (
        f"this request reserves {ask.tokens} tokens (about {prompt} for the prompt and "
        f"{reply} for the reply: its max_tokens, or the configuration's)"
    )
    details: dict[str, Any] = {"limit": reason}
    if reason == "requests":
        details.update(limit="requests_per_minute", value=ask.requests_per_minute)
        message = (
            f"this API key's limit of {ask.requests_per_minute} requests per minute is "
            f"reached: retry in {wait_s} s"
        )
    elif reason == "tokens":
        details.update(limit="tokens_per_minute", value=ask.tokens_per_minute, reserved=ask.tokens)
        message = (
            f"{reserving}, more than is left of this API key's {ask.tokens_per_minute} tokens "
            f"per minute: retry in {wait_s} s, or lower max_tokens"
        )
    elif reason == "tokens_too_large":
        details.update(limit="tokens_per_minute", value=ask.tokens_per_minute, reserved=ask.tokens)
        message = (
            f"{reserving}, more than this API key's whole limit of {ask.tokens_per_minute} "
            "tokens per minute: lower max_tokens or shorten the prompt"
        )
        return RateLimitedError(message, wait_ms=None, details=details, headers=headers)
    elif reason == "concurrent":
        details.update(limit="max_concurrent", value=ask.max_concurrent)
        message = (
            f"this API key already has {ask.max_concurrent} requests in progress, its "
            "limit: retry when one of them ends"
        )
    elif reason == "config_concurrent":
        details.update(
            limit="config_max_concurrent", value=ask.config_concurrent, config=ask.config
        )
        message = (
            f"configuration {ask.config!r} already has {ask.config_concurrent} replies in "
            "progress, its limit: retry when one of them ends"
        )
    else:
        period = "today (UTC)" if reason == "day" else "this month (UTC)"
        budget = ask.tokens_per_day if reason == "day" else ask.tokens_per_month
        details.update(limit=f"tokens_per_{reason}", value=budget, reserved=ask.tokens)
        return QuotaExceededError(
            f"this API key's budget of {budget} tokens for {period} does not cover this "
            f"request: {reserving}. Lower max_tokens, or ask an administrator to raise "
            "the budget",
            details=details,
            headers=headers,
        )
    return RateLimitedError(message, wait_ms=verdict.wait_ms, details=details, headers=headers)
