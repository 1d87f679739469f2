"""Which of this process's pending replies it is really answering.

A pending reply names its process (``message.owner_instance``), and while that process's
lease is alive nobody else retires it. So the process itself must know which of its
pending rows it will still answer: a claim whose connection broke after it committed
leaves a pending row that names a live process which will never generate it (the client
was told the send failed). Left alone, its conversation would refuse every send for the
whole ``pending_bound``.

:class:`OwnReplies` is that knowledge. A reply is entered *before* its claim runs, so no
committed pending row of this process is ever unknown to it (there is no window between
the commit and the bookkeeping), and marked claimed when the claim returns. It is dropped
when the claim fails, whatever the failure (a refusal stored nothing; an unknown outcome
means nobody here will answer it). The lease's bookkeeping
(``liveness.service.retire_abandoned``) retires this process's pending rows that are not
entered, and forgets the entries whose replies it finds ended, so the books stay as small
as the replies in flight.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uuid
    from collections.abc import Set


class OwnReplies:
    """The replies this process has claimed (or is claiming) and will still record."""

    def __init__(self) -> None:
        # Reply id -> when its claim returned (monotonic); None while the claim runs.
        self._entries: dict[uuid.UUID, float | None] = {}

    def proposed(self, reply_id: uuid.UUID) -> None:
        """The claim of ``reply_id`` is about to run: from now on its row may exist."""
        self._entries[reply_id] = None

    def claimed(self, reply_id: uuid.UUID) -> None:
        """The claim returned: the reply is pending and this process answers it."""
        if reply_id in self._entries:
            self._entries[reply_id] = time.monotonic()

    def abandoned(self, reply_id: uuid.UUID) -> None:
        """Nobody here answers ``reply_id``: its claim was refused or its outcome is unknown."""
        self._entries.pop(reply_id, None)

    def __contains__(self, reply_id: object) -> bool:
        return reply_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def settle(self, pending: Set[uuid.UUID], read_at: float) -> list[uuid.UUID]:
        """This process's pending replies that nobody here answers, given those the
        database held when read at ``read_at`` (monotonic, taken before the read).

        Entries whose claim returned before the read and whose reply was no longer pending
        in it have ended (recorded, or retired by someone else): they are forgotten. An
        entry claimed after the read is kept, whatever the read says.
        """
        orphans = [reply_id for reply_id in pending if reply_id not in self._entries]
        ended = [
            reply_id
            for reply_id, claimed_at in self._entries.items()
            if claimed_at is not None and claimed_at < read_at and reply_id not in pending
        ]
        for reply_id in ended:
            del self._entries[reply_id]
        return orphans
