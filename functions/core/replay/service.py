"""Replaying stored conversations against a configuration version, turn by turn.

Each user turn of the conversation is asked again, in order, of one pinned configuration
version, and its reply set beside the original's. Two modes:

- **faithful**: each turn is sent with the history the original had (the conversation's
  stored messages before it), so every turn is compared on the same context. For a turn
  whose original reply completed, the messages sent are exactly those of the evaluation's
  dataset-from-history item for that reply (``evals.history``), under the same rule.
- **rollout**: the replayed replies become the history, showing how the conversation would
  have gone with this configuration.

Either way the prompt is built by the one prompt rule (``chat.prompt``: the
configuration's system prompt, the history as chat counts it, the ``history_window``), so
a faithful replay against the configuration version that answered reproduces what chat
sent. Failed and cancelled original replies are replayed like any other turn and shown
with their status: a failed exchange is left out of later turns' history, as chat left it
out.

Every turn goes through the send path (``ChatService``), so its hooks (quotas) see each
exchange and a shutdown drains it. A replay stores nothing unless it is **saved**:
unsaved, its turns take the send path's not-stored mode (``ask_unstored``: no claim,
nothing recorded); saved, it is a new conversation of the same key, marked in its metadata
as a replay (which conversation, which configuration version, which mode), each turn sent
as any other send (the claim stores the user's turn and a pending reply before the model
is called, the recorder writes how the reply ended, a deletion of the saved conversation
aborts it), so it reads through the chat API like any other conversation.

Several conversations replay at once with bounded concurrency (:meth:`replay_many`);
the turns of one conversation go one after another.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.chat.exchanges import DEFAULT_HISTORY_CAP, Exchanges
from functions.core.chat.prompt import build_prompt, history_limit
from functions.core.chat.schemas import SendRequest
from functions.core.chat.service import ChatService
from functions.core.chat.targets import Target
from functions.core.configs import service as configs
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.errors import InvalidInputError, SwitchboardError
from functions.core.evals.service import find_owner
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.llm.errors import LLMError
from functions.core.logging import get_logger
from functions.core.messages.schemas import MessageOut, StoredTurn, Turn
from functions.core.replay.diff import similarity
from functions.core.replay.schemas import (
    MODES,
    REPLAY_METADATA_KEY,
    ReplayMode,
    ReplayResult,
    ReplayTurn,
    Reply,
    SourceConversation,
)
from functions.core.replay.sources import load_conversation

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from functions.core.configs.schemas import LLMConfigOut
    from functions.core.llm.client import LLMClient
    from functions.core.runtime import Runtime

log = get_logger(__name__)
MAX_CONCURRENCY = 256


class AskedTurn(msgspec.Struct, frozen=True, kw_only=True):
    """A user turn of a stored conversation: the messages that asked (from ``start``, the
    index in the conversation's messages) and the reply stored for them, if any."""

    start: int
    asking: list[MessageOut]
    reply: MessageOut | None


class ReplayFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation of :meth:`ReplayService.replay_many` that could not be replayed."""

    conversation_id: uuid.UUID
    error_code: str
    error_message: str


def is_reply(message: MessageOut) -> bool:
    """A reply the gateway generated (a turn a client sent, even an assistant's, has no
    model: it was stored as it came)."""
    return message.role == "assistant" and message.model is not None


def asked_turns(stored: Sequence[MessageOut]) -> list[AskedTurn]:
    """The conversation as user turns, each with the messages that asked and its reply."""
    found: list[AskedTurn] = []
    asking: list[MessageOut] = []
    start = 0
    for index, message in enumerate(stored):
        if not is_reply(message):
            if not asking:
                start = index
            asking.append(message)
            continue
        if asking:
            found.append(AskedTurn(start=start, asking=asking, reply=message))
        asking = []
    if any(message.role == "user" for message in asking):
        found.append(AskedTurn(start=start, asking=asking, reply=None))
    return found


def turn_of(message: MessageOut) -> Turn:
    return Turn(
        role=message.role,
        content=message.content,
        parts=message.content_parts,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def reply_of(message: MessageOut) -> Reply:
    """A stored reply (an original, or a saved replay's) as a replay shows it."""
    config = message.config
    return Reply(
        status=message.status,
        content=message.content,
        config=f"{config.name}@{config.version}" if config else None,
        model=message.model,
        prompt_tokens=message.usage.prompt_tokens if message.usage else None,
        completion_tokens=message.usage.completion_tokens if message.usage else None,
        latency_ms=message.latency_ms,
        ttft_ms=message.ttft_ms,
        finish_reason=message.finish_reason,
        error_code=message.error.code if message.error else None,
        error_message=message.error.message if message.error else None,
        message_id=message.id,
    )


def replay_metadata(
    source: SourceConversation, config: LLMConfigOut, mode: ReplayMode
) -> dict[str, Any]:
    """What a saved replay's conversation says about itself (``metadata.replay``)."""
    return {
        "of": str(source.id),
        "config": config.name,
        "config_version": config.version,
        "mode": mode,
        "source": "database" if source.source == "database" else "export",
    }


class ReplayService:
    """Replays conversations (see the module docstring) with one LLM client and, for a
    saved replay, the send path (``ChatService``: each turn one exchange, claimed, guarded
    and recorded as any other send's, so a shutdown drains it and a deletion aborts it)."""

    def __init__(
        self,
        llm: LLMClient,
        chat: ChatService | None = None,
        *,
        history_cap: int = DEFAULT_HISTORY_CAP,
    ) -> None:
        self._chat = chat or ChatService(llm, Exchanges(history_cap=history_cap))
        self._history_cap = history_cap

    @classmethod
    def of(cls, runtime: Runtime) -> ReplayService:
        """The replay service of an open runtime (its LLM client, send path and settings)."""
        return cls(
            runtime.require_llm(),
            runtime.chat,
            history_cap=runtime.settings.history_max_messages,
        )

    async def replay(
        self,
        source: SourceConversation | uuid.UUID,
        *,
        config: str,
        version: int | None = None,
        mode: ReplayMode = "faithful",
        save: bool = False,
        on_turn: Callable[[ReplayTurn, int], None] | None = None,
    ) -> ReplayResult:
        """Replay one conversation (a loaded one, or an id to read from the database)
        against ``config`` at ``version`` (default: its latest version now).

        ``on_turn(turn, total)`` is called as each turn is done (a progress bar). Raises
        ``NotFoundError`` for a configuration, version or conversation that does not
        exist, before anything is sent.
        """
        if mode not in MODES:
            raise InvalidInputError(
                f"mode is one of {', '.join(MODES)}, not {mode!r}", details={"field": "mode"}
            )
        target = await configs.get_config(config, version)
        if isinstance(source, uuid.UUID):
            source = await load_conversation(source)
        return await self._replay(source, target, mode, save=save, on_turn=on_turn)

    async def replay_many(
        self,
        sources: Sequence[SourceConversation | uuid.UUID],
        *,
        config: str,
        version: int | None = None,
        mode: ReplayMode = "faithful",
        save: bool = False,
        concurrency: int = 4,
        on_result: Callable[[ReplayResult | ReplayFailure, int, int], None] | None = None,
    ) -> list[ReplayResult | ReplayFailure]:
        """Replay many conversations, ``concurrency`` at a time, all against the same
        configuration version (resolved once, before anything is sent).

        Returns one entry per source, in order: its result, or why it could not be
        replayed (a conversation not found, one with no user turn, an upstream or database
        failure outside a turn). ``on_result(entry, done, total)`` as each one finishes.
        """
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidInputError(
                f"concurrency is from 1 to {MAX_CONCURRENCY}", details={"field": "concurrency"}
            )
        if mode not in MODES:
            raise InvalidInputError(
                f"mode is one of {', '.join(MODES)}, not {mode!r}", details={"field": "mode"}
            )
        target = await configs.get_config(config, version)
        results: list[ReplayResult | ReplayFailure | None] = [None] * len(sources)
        work = iter(enumerate(sources))
        done = 0

        async def worker() -> None:
            nonlocal done
            # One shared iterator: each conversation is taken by exactly one worker.
            for index, source in work:
                entry = await self._replay_or_failure(source, target, mode, save=save)
                results[index] = entry
                done += 1
                if on_result is not None:
                    on_result(entry, done, len(sources))

        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(sources))):
                group.create_task(worker())
        return [entry for entry in results if entry is not None]

    async def _replay_or_failure(
        self,
        source: SourceConversation | uuid.UUID,
        target: LLMConfigOut,
        mode: ReplayMode,
        *,
        save: bool,
    ) -> ReplayResult | ReplayFailure:
        conversation_id = source if isinstance(source, uuid.UUID) else source.id
        try:
            if isinstance(source, uuid.UUID):
                source = await load_conversation(source)
            return await self._replay(source, target, mode, save=save)
        except SwitchboardError as exc:
            if exc.code in ("database_unavailable", "internal_error"):
                raise
            log.warning("replay.failed", conversation_id=str(conversation_id), code=exc.code)
            return ReplayFailure(
                conversation_id=conversation_id, error_code=exc.code, error_message=exc.message
            )

    async def _replay(
        self,
        source: SourceConversation,
        target: LLMConfigOut,
        mode: ReplayMode,
        *,
        save: bool,
        on_turn: Callable[[ReplayTurn, int], None] | None = None,
    ) -> ReplayResult:
        asked = asked_turns(source.messages)
        if not asked:
            raise InvalidInputError(
                f"conversation {source.id} has no user turn to replay",
                details={"conversation_id": str(source.id)},
            )
        started = datetime.now(UTC)
        saved = await self._start_saved(source, target, mode) if save else None
        keep = history_limit("history", target.history_window, self._history_cap)
        # Rollout: the replay's own exchanges, as the prompt rule reads stored turns.
        rolled: list[StoredTurn] = []
        turns: list[ReplayTurn] = []
        for index, item in enumerate(asked, start=1):
            new_turns = [turn_of(message) for message in item.asking]
            if mode == "faithful":
                history = [
                    StoredTurn(seq=m.seq, status=m.status, turn=turn_of(m))
                    for m in source.messages[: item.start]
                ]
            else:
                history = rolled
            prompt = build_prompt(
                mode="history",
                new_turns=new_turns,
                stored=history[len(history) - keep :] if keep else [],
                system_prompt=target.system_prompt,
                window=target.history_window,
            )
            request_id = f"replay-{str(source.id)[:8]}-{index}"
            if saved is None:
                replied = await self._ask(
                    prompt, target, request_id, about=source, new_turns=new_turns
                )
            else:
                replied = await self._ask_and_store(
                    prompt,
                    target,
                    request_id,
                    conversation_id=saved,
                    owner=source.owner,
                    new_turns=new_turns,
                )
            seq = len(rolled) + 1
            rolled += [
                StoredTurn(seq=seq + i, status="complete", turn=turn)
                for i, turn in enumerate(new_turns)
            ]
            rolled.append(
                StoredTurn(
                    seq=seq + len(new_turns),
                    status=replied.status,
                    turn=Turn(role="assistant", content=replied.content),
                )
            )
            original = reply_of(item.reply) if item.reply is not None else None
            compared = original is not None and original.status == replied.status == "complete"
            turn = ReplayTurn(
                index=index,
                seq=item.asking[-1].seq,
                asked="\n".join(m.content for m in item.asking if m.role == "user"),
                original=original,
                replayed=replied,
                similarity=similarity(original.content, replied.content)
                if original is not None and compared
                else None,
                prompt_messages=len(prompt),
            )
            turns.append(turn)
            if on_turn is not None:
                on_turn(turn, len(asked))
        log.info(
            "replay.finished",
            conversation_id=str(source.id),
            config=f"{target.name}@{target.version}",
            mode=mode,
            turns=len(turns),
            saved=str(saved) if saved else None,
        )
        return ReplayResult(
            conversation_id=source.id,
            source=source.source,
            title=source.title,
            mode=mode,
            config=f"{target.name}@{target.version}",
            config_id=target.id,
            turns=turns,
            started_at=started,
            finished_at=datetime.now(UTC),
            saved_conversation_id=saved,
        )

    async def _start_saved(
        self, source: SourceConversation, target: LLMConfigOut, mode: ReplayMode
    ) -> uuid.UUID:
        """A new conversation of the original's key, marked as this replay."""
        owner = await find_owner(str(source.owner))
        label = f"{target.name}@{target.version}"
        created = await conversations.create_conversation(
            owner,
            ConversationCreate(
                title=f"Replay of {source.title or source.id} ({label}, {mode})"[:500],
                config=target.name,
                metadata={REPLAY_METADATA_KEY: replay_metadata(source, target, mode)},
            ),
        )
        return created.id

    async def _ask(
        self,
        prompt: list[Turn],
        target: LLMConfigOut,
        request_id: str,
        *,
        about: SourceConversation,
        new_turns: list[Turn],
    ) -> Reply:
        """One turn, not stored: the reply, or how it failed. Sent through the send path's
        not-stored mode (``ChatService.ask_unstored``): its hooks see the exchange and a
        shutdown drains it, as for any other door."""
        label = f"{target.name}@{target.version}"
        try:
            result = await self._chat.ask_unstored(
                SendRequest(
                    owner=about.owner,
                    access=UNRESTRICTED,  # an operator's replay
                    conversation_id=about.id,
                    turns=new_turns,
                    prompt="exact",
                    messages=prompt,
                    target=Target(config=target.name, version=target.version),
                    request_id=request_id,
                ),
                target,
            )
        except LLMError as exc:
            return Reply(
                status="failed",
                content=exc.partial_text,
                config=label,
                model=target.model,
                error_code=exc.code,
                error_message=exc.message,
            )
        usage = result.usage
        return Reply(
            status="complete",
            content=result.content,
            config=label,
            model=result.model or target.model,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=result.latency_ms,
            ttft_ms=result.ttft_ms,
            finish_reason=result.finish_reason,
        )

    async def _ask_and_store(
        self,
        prompt: list[Turn],
        target: LLMConfigOut,
        request_id: str,
        *,
        conversation_id: uuid.UUID,
        owner: uuid.UUID,
        new_turns: list[Turn],
    ) -> Reply:
        """One turn of a saved replay, sent through the send path: the user's turn and a
        pending reply are stored before the model is called (the claim), and the reply's
        end is recorded however it ends; a failed reply is shown as stored."""
        stored = await self._chat.send_recorded(
            SendRequest(
                owner=owner,
                access=UNRESTRICTED,  # an operator's replay
                conversation_id=conversation_id,
                turns=new_turns,
                # Nothing stored is read: the replay asks with the original's history.
                prompt="exact",
                messages=prompt,
                target=Target(config=target.name, version=target.version),
                request_id=request_id,
            )
        )
        return reply_of(stored)
