"""Threading: where a resent history belongs, and what a threaded send carries."""

from __future__ import annotations

import uuid

import msgspec

from functions.core.messages.schemas import Turn


class ForkPoint(msgspec.Struct, frozen=True, kw_only=True):
    """The stored message a branch forked from, and its conversation (ids only: either
    may since have been deleted; the branch holds its whole history as its own turns)."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID


class Thread(msgspec.Struct, frozen=True, kw_only=True):
    """What a threaded send carries (``SendRequest.thread``), from :class:`Located`.

    - ``history``: the request's whole history (what a branch stores as its turns).
    - ``chain``: the chain hash of each prefix of ``history``, one per turn; the send's
      new turns (``SendRequest.turns``, the tail of ``history``) are stored with the
      last ones, and the reply's is chained onto ``chain[-1]`` once it completes.
    - ``expect_last_seq``: appending, the claim refuses (``ThreadMovedError``) unless the
      conversation's last message is still this one; the send then branches.
    - ``tail_message_id``: that message (the branch's fork point).
    - ``forked_from``: the send starts a branch of this message.
    """

    history: list[Turn]
    chain: list[bytes]
    expect_last_seq: int | None = None
    tail_message_id: uuid.UUID | None = None
    forked_from: ForkPoint | None = None


class Located(msgspec.Struct, frozen=True, kw_only=True):
    """Where a history belongs (``threads.locate``).

    - append: ``conversation_id`` set; the first ``matched`` messages are stored there
      and its last message is the last of them (seq ``expect_last_seq``); the rest are new.
    - branch: ``conversation_id`` None and ``forked_from`` set: a stored conversation
      holds a prefix of the history but moved on past it (a regenerated turn, an edit,
      two resends at once); a new conversation holds the whole history.
    - new: neither; a new conversation holds the whole history.
    """

    chain: list[bytes]
    conversation_id: uuid.UUID | None = None
    matched: int = 0
    expect_last_seq: int | None = None
    tail_message_id: uuid.UUID | None = None
    forked_from: ForkPoint | None = None

    def thread(self, history: list[Turn]) -> Thread:
        """What the send carries for ``history`` (the messages located)."""
        return Thread(
            history=history,
            chain=self.chain,
            expect_last_seq=self.expect_last_seq,
            tail_message_id=self.tail_message_id,
            forked_from=self.forked_from,
        )
