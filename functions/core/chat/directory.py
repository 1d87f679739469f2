"""Who owns a conversation and which configuration it names, remembered per process.

A send checks ownership before it waits on anything (so a stranger learns nothing from
timing: another key's conversation is a 404 at once, busy or not) and needs the
conversation's config name to resolve its configuration. Both are read once and kept: the
owner never changes, and the claim checks the config name under its lock (a conversation
changed or deleted meanwhile makes the claim refuse, and the entry is dropped).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from functions.core.conversations.service import not_found
from functions.core.db.sql import fetch

MAX_ENTRIES = 50_000


class ConversationDirectory:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[uuid.UUID, tuple[uuid.UUID, str | None]] = OrderedDict()
        self._max_entries = max_entries

    async def config_name(self, owner: uuid.UUID, conversation_id: uuid.UUID) -> str | None:
        """The conversation's config name; :class:`NotFoundError` unless ``owner`` owns it."""
        entry = self._entries.get(conversation_id)
        if entry is None:
            rows = await fetch(
                "SELECT owner_key, config_name FROM conversation WHERE id = {}", conversation_id
            )
            if not rows:
                raise not_found(conversation_id)
            entry = (uuid.UUID(str(rows[0]["owner_key"])), rows[0]["config_name"])
            self.remember(conversation_id, *entry)
        else:
            self._entries.move_to_end(conversation_id)
        if entry[0] != owner:
            raise not_found(conversation_id)
        return entry[1]

    def remember(self, conversation_id: uuid.UUID, owner: uuid.UUID, config: str | None) -> None:
        self._entries[conversation_id] = (owner, config)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, conversation_id: uuid.UUID) -> None:
        self._entries.pop(conversation_id, None)
