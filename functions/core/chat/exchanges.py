"""Claiming an exchange: ownership, the configuration, the claim and the prompt.

:class:`Exchanges` is the first half of every send, whatever calls the model afterwards:
it checks ownership (before any wait), resolves the configuration (``targets``), claims
(the new turns and a pending reply are committed before vLLM is called;
``messages.claim``), and builds the prompt (``prompt``). :class:`ChatService` calls the
model with what it returns; a door that reads the model its own way (passing vLLM's
stream through, say) uses :meth:`Exchanges.begin` and :meth:`Exchanges.llm_request` and
ends the reply through a ``ReplyRecorder``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.chat.directory import ConversationDirectory
from functions.core.chat.hooks import Admission, admission
from functions.core.chat.idempotency import Replay, find_previous
from functions.core.chat.prompt import build_prompt, history_limit
from functions.core.chat.targets import ConfigView
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.errors import as_database_error
from functions.core.errors import (
    ConflictError,
    DatabaseUnavailableError,
    InvalidInputError,
    NotFoundError,
)
from functions.core.keys import access
from functions.core.liveness.service import Lease, pending_bound
from functions.core.llm.schemas import ChatMessage, ChatRequest
from functions.core.messages.claim import (
    ClaimRequest,
    ConversationBusyError,
    IdempotencyRaceError,
    StaleViewError,
    ThreadMovedError,
    claim,
)
from functions.core.messages.schemas import ConfigRef, Exchange, MessageOut, Turn
from functions.core.settings import Settings
from functions.core.threads.schemas import ForkPoint

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from functions.core.chat.locks import ConversationLocks, Hold
    from functions.core.chat.schemas import SendRequest
    from functions.core.chat.targets import Resolved
    from functions.core.configs.schemas import LLMConfigOut
    from functions.core.messages.claim import Claim

BUSY_RETRY_S = 0.05
DEFAULT_LEASE_TTL_S = Settings().lease_ttl_s
DEFAULT_PENDING_BOUND = pending_bound(Settings())
DEFAULT_IDEMPOTENCY_WINDOW = timedelta(seconds=Settings().idempotency_window_s)
DEFAULT_HISTORY_CAP = Settings().history_max_messages
# A stale view (a configuration or the conversation changed since it was read) is read
# again; more than a few in a row means configurations change faster than sends start.
STALE_VIEW_RETRIES = 5


class Exchanges:
    """Starts exchanges for one process; shared by every send (it holds the caches)."""

    def __init__(
        self,
        *,
        busy_timeout_s: float = 30.0,
        lease: Lease | None = None,
        pending_bound: timedelta = DEFAULT_PENDING_BOUND,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        history_cap: int = DEFAULT_HISTORY_CAP,
    ) -> None:
        self._history_cap = history_cap
        self._idempotency_window = idempotency_window
        self._busy_timeout_s = busy_timeout_s
        # The runtime's lease, renewed in the background; a bare Exchanges (a test, a
        # script) renews its own whenever it claims.
        self.lease = lease or Lease(ttl_s=DEFAULT_LEASE_TTL_S)
        self._pending_bound = pending_bound
        self._configs = ConfigView()
        self._directory = ConversationDirectory()

    @property
    def busy_timeout_s(self) -> float:
        """How long a send waits for another reply in its conversation."""
        return self._busy_timeout_s

    async def begin(
        self,
        request: SendRequest,
        *,
        replay_checked: bool = False,
        deadline: float | None = None,
    ) -> Exchange:
        """Store the new turns and a pending reply; return them and the prompt to send.

        Waits (up to the busy timeout) while another process's reply in the conversation
        is pending; raises :class:`ConversationBusyError` after that. The caller holds the
        conversation's lock (see ``ChatService.send``) or accepts the busy wait.
        ``replay_checked``: the caller has just looked the idempotency key up
        (:meth:`prepare`), so the first attempt need not look again. ``deadline``
        (``time.monotonic()``): when the send's busy budget ends, if the caller already
        spent part of it waiting for the conversation's lock; the claim is still tried once.

        A threaded send (``request.thread``) whose conversation moved on since it was
        located (the claim's ``ThreadMovedError``) is stored as a branch instead: a new
        conversation holding the whole history, recording the message it forked from.
        """
        _check_turns(request)
        if not replay_checked:
            await self._check_replay(request)
        conversation_id = request.conversation_id
        if conversation_id is None:
            conversation_id = await self._start_conversation(request)
        if deadline is None:
            deadline = time.monotonic() + self._busy_timeout_s
        stale_views = 0
        while True:
            await self.lease.ensure()
            config_name = await self._directory.config_name(request.owner, conversation_id)
            resolved = await self._resolve(request, config_name)
            turn_ids = [uuid.uuid4() for _ in request.turns]
            reply_id, now = uuid.uuid4(), datetime.now(UTC)
            window = resolved.config.history_window if resolved.config else None
            key = request.idempotency
            thread = request.thread
            fork = thread.forked_from if thread is not None else None
            try:
                claimed = await self._claim(
                    ClaimRequest(
                        owner=request.owner,
                        conversation_id=conversation_id,
                        config_name=config_name,
                        config_epoch=resolved.epoch,
                        turns=request.turns,
                        turn_ids=turn_ids,
                        reply_id=reply_id,
                        reply_config_id=resolved.config.id if resolved.config else None,
                        reply_model=resolved.model,
                        instance_id=self.lease.instance_id,
                        now=now,
                        # This process's bound goes with its reply: whoever judges the
                        # reply later (a sweep, another send) uses it, not their own.
                        stale_after=now + self._pending_bound,
                        stale_before=now - self._pending_bound,
                        history_limit=history_limit(request.prompt, window, self._history_cap),
                        idempotency_key=key.key if key else None,
                        request_hash=key.request_hash if key else None,
                        chain=thread.chain[len(thread.chain) - len(request.turns) :]
                        if thread is not None
                        else None,
                        expect_last_seq=thread.expect_last_seq if thread is not None else None,
                        forked_from_conversation=fork.conversation_id if fork else None,
                        forked_from_message=fork.message_id if fork else None,
                    ),
                    request,
                )
            except IdempotencyRaceError:
                # The first send with this key is stored now: replay it.
                await self._check_replay(request)
                continue
            except StaleViewError:
                self._directory.forget(conversation_id)
                self._configs.invalidate()
                stale_views += 1
                if stale_views > STALE_VIEW_RETRIES:
                    raise
                continue
            except ThreadMovedError:
                # Another send got there first (or the turn was regenerated): branch. The
                # new conversation is nobody else's yet, so this happens once.
                request = _branch(request, conversation_id)
                conversation_id = await self._start_conversation(request)
                continue
            except NotFoundError:
                self._directory.forget(conversation_id)
                raise
            except ConversationBusyError:
                # Another process is replying in this conversation; wait our turn.
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(BUSY_RETRY_S)
                # The reply being waited for may be this very send's first attempt.
                await self._check_replay(request)
                continue
            try:
                return _exchange(
                    instance_id=self.lease.instance_id,
                    request=request,
                    conversation_id=conversation_id,
                    resolved=resolved,
                    claimed=claimed,
                    turn_ids=turn_ids,
                    reply_id=reply_id,
                    now=now,
                )
            except BaseException:
                # Stored, but no caller will ever answer it.
                self.lease.retire_later(reply_id)
                raise

    async def begin_choices(self, request: SendRequest, first: Exchange) -> list[Exchange]:
        """The further choices of an ``n`` > 1 send (``request.choices``), once ``first``
        is claimed: each a new conversation of the same key holding the whole history
        (with its chain hashes) and a pending reply, forked from ``first``'s user turn
        (``functions.core.chat.choices``). A new conversation is nobody else's, so no lock
        is held and no claim waits. If one cannot be stored, those stored are retired (and
        ``first`` with them) before the error is raised: nobody will answer them."""
        thread = request.thread
        if thread is None:
            raise ValueError("several choices need the whole history (a threaded send)")
        fork = ForkPoint(
            conversation_id=first.assistant_message.conversation_id,
            message_id=first.user_message.id,
        )
        branch = msgspec.structs.replace(
            request,
            conversation_id=None,
            turns=thread.history,
            idempotency=None,  # the first choice's claim holds the key
            choices=1,
            thread=msgspec.structs.replace(
                thread, expect_last_seq=None, tail_message_id=None, forked_from=fork
            ),
        )
        claimed: list[Exchange] = []
        try:
            for _ in range(request.choices - 1):
                claimed.append(await self.begin(branch, replay_checked=True))
        except BaseException:
            for exchange in [first, *claimed]:
                self.lease.retire_later(exchange.assistant_message.id)
            raise
        return claimed

    async def _claim(self, claim_request: ClaimRequest, request: SendRequest) -> Claim:
        """The claim, with this process's books kept (``Lease.replies``): the reply counts
        as answered here from before the claim can commit. A refused claim stored nothing.
        Any other failure leaves its outcome unknown (the claim may have committed and only
        its answer been lost with the connection): the reply is retired in the background
        if it was stored, and the client is told its message may be stored."""
        reply_id = claim_request.reply_id
        self.lease.replies.proposed(reply_id)
        try:
            claimed = await claim(claim_request)
        except (ConflictError, NotFoundError):
            self.lease.replies.abandoned(reply_id)
            raise
        except BaseException as exc:
            self.lease.retire_later(reply_id)
            if isinstance(exc, Exception) and as_database_error(exc) is not None:
                raise unconfirmed_send(claim_request, request) from exc
            raise
        self.lease.replies.claimed(reply_id)
        return claimed

    async def _resolve(self, request: SendRequest, config_name: str | None) -> Resolved:
        """The configuration (or bare model) answering ``request``, if its key may use it."""
        resolved = await self._configs.resolve(request.target, config_name)
        config = resolved.config.name if resolved.config else None
        access.require(request.access, config=config, model=resolved.model)
        return resolved

    def llm_request(self, exchange: Exchange, request: SendRequest) -> ChatRequest:
        """The upstream request for a claimed exchange: its prompt, model and sampling."""
        asked = upstream_request(
            exchange.prompt,
            exchange.config,
            model=exchange.model,
            sampling=request.sampling,
            extra=request.extra,
        )
        if request.completion_prompt is None:
            return asked
        return msgspec.structs.replace(asked, completion_prompt=request.completion_prompt)

    async def prepare(self, request: SendRequest) -> tuple[SendRequest, uuid.UUID]:
        """Check ownership (or start the conversation) before any lock or wait, so a
        stranger learns nothing from timing: another key's conversation is a 404 at once.

        Raises :class:`Replay` when the send was made before with its idempotency key.
        """
        await self._check_replay(request)
        # What the send names, before anything is stored (what it resolves to is checked
        # by the claim's loop: a conversation's configuration, the default).
        target = request.target
        access.require_named(request.access, config=target.config, model=target.model)
        if request.conversation_id is None:
            conversation_id = await self._start_conversation(request)
            return msgspec.structs.replace(request, conversation_id=conversation_id), (
                conversation_id
            )
        await self._directory.config_name(request.owner, request.conversation_id)
        return request, request.conversation_id

    async def admission(self, request: SendRequest, conversation_id: uuid.UUID | None) -> Admission:
        """What the send path's hooks are told before anything is stored: the send and
        the configuration that will answer it (from this process's memory of both, which
        the claim checks again). ``conversation_id``: None for a new conversation; another
        key's is a 404 here, as in :meth:`prepare`."""
        config_name = (
            await self._directory.config_name(request.owner, conversation_id)
            if conversation_id is not None
            else None
        )
        resolved = await self._configs.resolve(request.target, config_name)
        return admission(request, conversation_id, resolved.config, model=resolved.model)

    def forget(self, conversation_id: uuid.UUID) -> None:
        """Drop what is remembered of a conversation (it was deleted)."""
        self._directory.forget(conversation_id)

    async def _check_replay(self, request: SendRequest) -> None:
        if request.idempotency is None:
            return
        previous = await find_previous(request.owner, request.idempotency, self._idempotency_window)
        if previous is not None:
            raise Replay(previous)

    async def _start_conversation(self, request: SendRequest) -> uuid.UUID:
        created = await conversations.create_conversation(
            request.owner, ConversationCreate(title=request.title, config=request.target.config)
        )
        self._directory.remember(created.id, request.owner, created.config)
        return created.id


class Unlocked:
    """A threaded append's stand-in for its conversation's lock: it never waits for
    another send there. A send in progress there means the conversation moved on, which
    the claim checks before anything else (the send then branches); waiting for that
    send's reply would only delay the branch, or end it in ``conversation_busy``."""

    __slots__ = ("_timeout_s",)

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    async def __aenter__(self) -> float:
        return time.monotonic() + self._timeout_s

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


def conversation_hold(
    locks: ConversationLocks, request: SendRequest, conversation_id: uuid.UUID, timeout_s: float
) -> Hold | Unlocked:
    """What a send holds while it claims: its conversation's lock (``locks``), or nothing
    for a threaded append (:class:`Unlocked`)."""
    if request.thread is not None and request.thread.expect_last_seq is not None:
        return Unlocked(timeout_s)
    return locks.hold(conversation_id, timeout_s)


def unconfirmed_send(claim_request: ClaimRequest, request: SendRequest) -> DatabaseUnavailableError:
    """The 503 for a send whose claim's outcome is unknown: its message may be stored."""
    turn_ids = [str(turn_id) for turn_id in claim_request.turn_ids]
    details: dict[str, Any] = {
        "conversation_id": str(claim_request.conversation_id),
        "user_message_id": turn_ids[-1],
        "assistant_message_id": str(claim_request.reply_id),
        "message_ids": turn_ids,
        "stored": "unknown",
    }
    if request.idempotency is not None:
        details["idempotency_key"] = request.idempotency.key
        retry = (
            "retrying with the same Idempotency-Key is safe: it stores nothing twice and "
            "answers with what became of this send"
        )
    else:
        retry = (
            "a retry without an Idempotency-Key would store it again: look for "
            "details.user_message_id in the conversation first, or send with an "
            "Idempotency-Key to retry safely"
        )
    return DatabaseUnavailableError(
        "the database connection broke while your message was being stored, so it may or "
        "may not be stored (details has the ids it was given); if it is, it gets no reply "
        f"and is marked failed within seconds; {retry}",
        details=details,
        retry_after_s=1,
    )


def _branch(request: SendRequest, conversation_id: uuid.UUID) -> SendRequest:
    """A threaded send whose conversation moved on, as a new conversation's first send:
    the whole history as its turns, forked from the message it was to extend."""
    thread = request.thread
    if thread is None or thread.tail_message_id is None:
        raise ValueError("only a threaded send that extends a conversation branches")
    fork = ForkPoint(conversation_id=conversation_id, message_id=thread.tail_message_id)
    return msgspec.structs.replace(
        request,
        conversation_id=None,
        turns=thread.history,
        thread=msgspec.structs.replace(
            thread, expect_last_seq=None, tail_message_id=None, forked_from=fork
        ),
    )


def _check_turns(request: SendRequest) -> None:
    if not request.turns:
        raise InvalidInputError("a send needs at least one turn", details={"field": "turns"})
    for turn in request.turns:
        if turn.role == "user" and not turn.parts and not turn.content.strip():
            raise InvalidInputError("content is empty", details={"field": "content"})


def upstream_request(
    prompt: Sequence[Turn],
    config: LLMConfigOut | None,
    *,
    model: str | None,
    sampling: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ChatRequest:
    """What vLLM is asked for ``prompt``: the configuration's sampling and extra fields
    (``sampling`` and ``extra`` override them), for every caller that talks to the model
    about stored turns (sends, replay)."""
    sampling = dict(sampling or {})
    chosen = config.sampling(sampling) if config else sampling
    fields = {**config.extra, **(extra or {})} if config else dict(extra or {})
    return ChatRequest(
        messages=[_chat_message(turn) for turn in prompt],
        model=model,
        extra=fields,
        **chosen,
    )


def _chat_message(turn: Turn) -> ChatMessage:
    return ChatMessage(
        role=turn.role,
        content=turn.parts if turn.parts is not None else turn.content,
        name=turn.name,
        tool_call_id=turn.tool_call_id,
        tool_calls=turn.tool_calls,
    )


def _exchange(
    *,
    instance_id: uuid.UUID,
    request: SendRequest,
    conversation_id: uuid.UUID,
    resolved: Resolved,
    claimed: Claim,
    turn_ids: list[uuid.UUID],
    reply_id: uuid.UUID,
    now: datetime,
) -> Exchange:
    count = len(request.turns)
    first_seq = claimed.last_seq - count
    turns = [
        MessageOut(
            id=turn_id,
            conversation_id=conversation_id,
            seq=first_seq + index,
            role=turn.role,
            content=turn.content,
            content_parts=turn.parts,
            tool_calls=turn.tool_calls,
            tool_call_id=turn.tool_call_id,
            name=turn.name,
            status="complete",
            created_at=now,
            completed_at=now,
        )
        for index, (turn, turn_id) in enumerate(zip(request.turns, turn_ids, strict=True))
    ]
    config = resolved.config
    reply = MessageOut(
        id=reply_id,
        conversation_id=conversation_id,
        seq=claimed.last_seq,
        role="assistant",
        content="",
        status="pending",
        created_at=now,
        config=ConfigRef(id=config.id, name=config.name, version=config.version)
        if config
        else None,
        model=resolved.model,
    )
    prompt = (
        request.messages
        if request.messages is not None
        else build_prompt(
            mode=request.prompt,
            new_turns=request.turns,
            stored=claimed.history,
            system_prompt=request.instructions
            if request.instructions is not None
            else (config.system_prompt if config else None),
            window=config.history_window if config else None,
        )
    )
    return Exchange(
        turns=turns,
        assistant_message=reply,
        prompt=prompt,
        config=config,
        model=resolved.model,
        instance_id=instance_id,
        owner=request.owner,
        chain_parent=request.thread.chain[-1] if request.thread is not None else None,
    )
