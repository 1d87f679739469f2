"""Where a replay's conversation comes from: the database, or the export flow's files (every
format, a manifest, a folder of incremental runs), read back exactly as stored."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.service import ChatService
from functions.core.errors import InvalidInputError, NotFoundError
from functions.core.exports.schemas import ExportRequest, Format, Selection
from functions.core.exports.service import export_history
from functions.core.keys import service as keys
from functions.core.keys.schemas import UNRESTRICTED, ApiKeyCreate
from functions.core.replay.service import ReplayService
from functions.core.replay.sources import export_files, load_conversation, read_export
from tests.core.evals.conftest import BodyFaults
from tests.core.exports.conftest import writers_ended
from tests.core.replay.conftest import FAILS, make_config, seed_conversation

TEXTS = ['He said "안녕, 세상",\nthen left; =SUM(A1) 😀', f"{FAILS} and then", "마지막 질문?"]


async def export(out: Path, fmt: Format = "jsonl", **selection: Any) -> Path:
    await writers_ended()  # an export takes what was committed before it
    result = await export_history(
        ExportRequest(destination=str(out), format=fmt, selection=Selection(**selection)),
        now=datetime.now(UTC),
    )
    return out / result.manifest_path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
async def test_an_export_file_holds_the_conversation_as_the_database_does(
    shared_db: Engine[Any],
    chat: ChatService,
    replayer: ReplayService,
    faults: BodyFaults,
    tmp_path: Path,
    fmt: Format,
) -> None:
    await make_config("prod", system_prompt="Be brief.")
    owner = (await keys.create_key(ApiKeyCreate(name="app"))).id
    conversation = await seed_conversation(chat, owner, "prod", TEXTS, title="제목 ✨")
    other = await seed_conversation(chat, owner, "prod", ["another one"])
    manifest = await export(tmp_path, fmt)
    [data] = export_files(manifest)

    stored = await load_conversation(conversation)
    for source in (manifest, data, tmp_path):
        exported = read_export(source, conversation)
        assert exported.messages == stored.messages
        assert (exported.id, exported.owner, exported.title) == (conversation, owner, "제목 ✨")
        assert (exported.config, exported.metadata) == ("prod", {"team": "support"})
        assert exported.source == str(source)
    with pytest.raises(InvalidInputError, match="2 conversations"):
        read_export(data)
    with pytest.raises(NotFoundError):
        read_export(data, uuid.uuid4())

    faults.bodies.clear()
    from_database = await replayer.replay(stored, config="prod")
    database_sent = list(faults.bodies)
    faults.bodies.clear()
    from_file = await replayer.replay(read_export(data, conversation), config="prod")
    assert faults.bodies == database_sent
    assert [t.original for t in from_file.turns] == [t.original for t in from_database.turns]
    assert [t.replayed.content for t in from_file.turns] == [
        t.replayed.content for t in from_database.turns
    ]
    assert from_file.source == str(data)
    assert from_file.turns[1].original is not None
    assert from_file.turns[1].original.status == "failed"
    assert (await load_conversation(other)).messages[0].content == "another one"


async def test_a_conversation_split_over_incremental_exports_needs_them_all(
    shared_db: Engine[Any], chat: ChatService, tmp_path: Path
) -> None:
    await make_config("prod")
    owner = (await keys.create_key(ApiKeyCreate(name="app"))).id
    conversation = await seed_conversation(chat, owner, "prod", ["one"])
    first = await export(tmp_path)
    await seed_conversation_more(chat, owner, conversation, "two")
    second = await export(tmp_path)

    with pytest.raises(InvalidInputError, match=r"messages 1-2 are missing"):
        read_export(second)
    # The folder (or both manifests' files) holds the whole conversation.
    whole = read_export(tmp_path)
    assert [m.content for m in whole.messages if m.role == "user"] == ["one", "two"]
    assert len(export_files(tmp_path)) == len(export_files(first)) + len(export_files(second))


async def seed_conversation_more(
    chat: ChatService, owner: uuid.UUID, conversation: uuid.UUID, text: str
) -> None:
    from functions.core.chat.schemas import SendRequest
    from functions.core.messages.schemas import Turn

    await chat.send(
        SendRequest(
            access=UNRESTRICTED,
            owner=owner,
            conversation_id=conversation,
            turns=[Turn(role="user", content=text)],
        )
    )


def test_what_is_not_an_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        read_export(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="jsonl"):
        read_export(tmp_path / "notes.txt")
    with pytest.raises(InvalidInputError, match="no export"):
        read_export(tmp_path)
    (tmp_path / "old.jsonl").write_text(json.dumps({"schema_version": 99}) + "\n")
    with pytest.raises(InvalidInputError, match="schema_version 99"):
        read_export(tmp_path / "old.jsonl")
