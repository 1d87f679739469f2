"""Replay: a stored conversation, what a replay is asked, and what it found, turn by turn."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec

from functions.core.messages.schemas import MessageOut, Status

ReplayMode = Literal["faithful", "rollout"]
MODES: tuple[ReplayMode, ...] = ("faithful", "rollout")
# Where a replay saved as a conversation says what it replays (``conversation.metadata``).
REPLAY_METADATA_KEY = "replay"


class SourceConversation(msgspec.Struct, frozen=True, kw_only=True):
    """A stored conversation as replay reads it: from the database or an export file.

    ``messages`` are every stored message in sequence order (an export holds only finished
    ones, so a reply still pending when it was written is not there). ``source`` says where
    it was read: ``database``, or the export file's path.
    """

    id: uuid.UUID
    owner: uuid.UUID
    title: str
    config: str | None
    metadata: dict[str, Any]
    messages: list[MessageOut]
    source: str = "database"


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """One reply to a turn, the original or the replay's: what it said and how it went.

    ``status`` is the stored status (``complete``, ``failed``, ``cancelled``; ``pending``
    for an original still being generated). ``message_id`` is the stored message: the
    original's, or the saved replay's (None for a replay that was not saved).
    """

    status: Status
    content: str
    config: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    finish_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    message_id: uuid.UUID | None = None


class ReplayTurn(msgspec.Struct, frozen=True, kw_only=True):
    """One user turn of the conversation, answered again.

    ``index`` counts turns from 1; ``seq`` is where the turn that asked is stored.
    ``original`` is None when the conversation holds no reply to it (it ended there).
    ``similarity`` (0 to 1, word level; ``diff.similarity``) is set when both replies
    completed. ``prompt_messages`` is how many messages the replay sent the model (the
    system prompt and the history included).
    """

    index: int
    seq: int
    asked: str
    original: Reply | None
    replayed: Reply
    similarity: float | None
    prompt_messages: int

    @property
    def changed(self) -> bool:
        """Whether the replay answered differently: other words, or another outcome."""
        if self.original is None:
            return True
        if self.similarity is not None:
            return self.similarity < 1.0
        return self.original.status != self.replayed.status


class ReplaySummary(msgspec.Struct, frozen=True, kw_only=True):
    """A replay in numbers (both sides over the same turns)."""

    turns: int
    changed: int
    replayed_complete: int
    replayed_failed: int
    original_failed: int
    mean_similarity: float | None
    min_similarity: float | None
    original_completion_tokens: int
    replayed_completion_tokens: int
    original_latency_ms: float
    replayed_latency_ms: float


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation replayed against one configuration version, turn by turn.

    ``saved_conversation_id`` is the new conversation holding the replay (same key as the
    original), when it was saved.
    """

    conversation_id: uuid.UUID
    source: str
    title: str
    mode: ReplayMode
    config: str
    config_id: uuid.UUID
    turns: list[ReplayTurn]
    started_at: datetime
    finished_at: datetime
    saved_conversation_id: uuid.UUID | None = None

    def summary(self) -> ReplaySummary:
        similarities = [t.similarity for t in self.turns if t.similarity is not None]
        originals = [t.original for t in self.turns if t.original is not None]
        return ReplaySummary(
            turns=len(self.turns),
            changed=sum(t.changed for t in self.turns),
            replayed_complete=sum(t.replayed.status == "complete" for t in self.turns),
            replayed_failed=sum(t.replayed.status != "complete" for t in self.turns),
            original_failed=sum(r.status in ("failed", "cancelled") for r in originals),
            mean_similarity=(
                round(sum(similarities) / len(similarities), 6) if similarities else None
            ),
            min_similarity=min(similarities) if similarities else None,
            original_completion_tokens=sum(r.completion_tokens or 0 for r in originals),
            replayed_completion_tokens=sum(t.replayed.completion_tokens or 0 for t in self.turns),
            original_latency_ms=round(sum(r.latency_ms or 0.0 for r in originals), 3),
            replayed_latency_ms=round(sum(t.replayed.latency_ms or 0.0 for t in self.turns), 3),
        )
