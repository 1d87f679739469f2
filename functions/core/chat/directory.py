"""Who owns a conversation and which configuration it names, remembered per process.

A send checks ownership before it waits on anything (so a stranger learns nothing from
timing: another key's conversation is a 404 at once, busy or not, at the cost of an
unknown id) and needs the
conversation's config name to resolve its configuration. Both are read once and kept: the
owner never changes, and the claim checks the config name under its lock (a conversation
changed or deleted meanwhile makes the claim refuse, and the entry is dropped).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from functions.core.conversations.service import not_found
from functions.core.db.sql import fetch

if TYPE_CHECKING:
    import uuid

MAX_ENTRIES = 50_000


class ConversationDirectory:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[uuid.UUID, tuple[uuid.UUID, str | None]] = OrderedDict()
        self._max_entries = max_entries

    async def config_name(self, owner: uuid.UUID, conversation_id: uuid.UUID) -> str | None:
        """The conversation's config name; :class:`NotFoundError` unless ``owner`` owns it.

        Only the owner's own lookups are remembered, and a remembered conversation asked
        for by anyone else is looked up again like any unknown id: a stranger's 404 costs
        the same query whether the conversation exists or not, so its timing tells nothing.
        """
        entry = self._entries.get(conversation_id)
        if entry is not None and entry[0] == owner:
            self._entries.move_to_end(conversation_id)
            return entry[1]
        rows = await fetch(
            "SELECT config_name FROM conversation WHERE id = {} AND owner_key = {}",
            conversation_id,
            owner,
        )
        if not rows:
            raise not_found(conversation_id)
        config: str | None = rows[0]["config_name"]
        self.remember(conversation_id, owner, config)
        return config

    def remember(self, conversation_id: uuid.UUID, owner: uuid.UUID, config: str | None) -> None:
        self._entries[conversation_id] = (owner, config)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, conversation_id: uuid.UUID) -> None:
        self._entries.pop(conversation_id, None)
