"""The outcome journal: what a stop must not lose, read back after a crash, replayed once.

The file-level tests need no database; the replay tests write real pending replies on both
engines and replay journals into them as the next process would.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.journal import (
    SCRATCH_STALE_S,
    SUFFIX,
    JournalFile,
    JournalFullError,
    JournalHeader,
    OutcomeJournal,
    UnwrittenOutcome,
    Written,
    claim_orphans,
    frame,
    journal_directory,
    read_records,
)
from functions.core.chat.recorder import OutcomeBacklog, ReplyNotRecordedError, ReplyRecorder
from functions.core.conversations import service as conversations
from functions.core.db.engine import engine_from_url, using
from functions.core.db.sql import fetch
from functions.core.messages import service as messages
from functions.core.messages.schemas import ConfigRef, Exchange, MessageOut, ReplyOutcome
from functions.core.settings import load_settings
from tests.core.chat.conftest import Party, new_party

if TYPE_CHECKING:
    from pathlib import Path


DATABASE = "postgresql://127.0.0.1:5432/journal-tests"


def entry(text: str = "the reply", **fields: Any) -> UnwrittenOutcome:
    values: dict[str, Any] = {
        "reply_id": uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "owner_instance": uuid.uuid4(),
        "config": ConfigRef(id=uuid.uuid4(), name="cfg", version=2),
        "outcome": ReplyOutcome(
            status="complete",
            content=text,
            model="served",
            prompt_tokens=3,
            completion_tokens=4,
            latency_ms=12.5,
            ttft_ms=2.0,
            finish_reason="stop",
            upstream_request_id="chatcmpl-1",
        ),
        **fields,
    }
    return UnwrittenOutcome(**values)


def journal_in(directory: Path, *, database: str = DATABASE, **kw: Any) -> OutcomeJournal:
    return OutcomeJournal(
        directory,
        database=database,
        instance=uuid.uuid4(),
        max_bytes=kw.get("max_bytes", 1024 * 1024),
    )


def orphans(directory: Path, database: str = DATABASE) -> list[JournalFile]:
    return list(claim_orphans(directory, database=database))


def test_kept_outcomes_are_read_back_whole_after_their_process_lets_go(tmp_path: Path) -> None:
    journal = journal_in(tmp_path)
    kept = [entry(f"reply {i} ✓ \x00 with a NUL") for i in range(3)]
    for one in kept:
        journal.keep(one)
    journal.written(kept[1].reply_id)
    assert journal.unwritten == 2
    assert journal.close() == 2  # left for the next start

    [orphan] = orphans(tmp_path)
    try:
        assert orphan.header is not None
        assert orphan.header.instance == journal.instance
        assert [one for one, _ in orphan.unwritten.values()] == [kept[0], kept[2]]
    finally:
        orphan.close()


def test_the_file_is_private_and_exists_only_while_something_is_unwritten(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "outcomes"
    journal = journal_in(directory)
    assert not directory.exists()  # nothing kept, nothing created
    one, two = entry(), entry()
    journal.keep(one)
    journal.keep(two)
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    journal.written(one.reply_id)
    assert journal.path.exists()
    journal.written(two.reply_id)
    assert not journal.path.exists()
    journal.keep(entry())  # a new outage: a new file
    assert journal.path.exists()
    journal.written(uuid.uuid4())  # never kept: nothing to note
    assert journal.unwritten == 1
    assert journal.close() == 1
    assert journal.path.exists()


def test_each_record_is_fsynced_before_keep_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the client is told relies on this: the bytes of an outcome reached the disk
    (not only the page cache) before ``keep`` returned."""
    calls: list[tuple[str, int]] = []
    real_write, real_fsync = os.write, os.fsync

    def write(fd: int, data: Any) -> int:
        calls.append(("write", fd))
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        calls.append(("fsync", fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    journal = journal_in(tmp_path)
    for _ in range(2):
        journal.keep(entry())
        last_write = max(i for i, (kind, _) in enumerate(calls) if kind == "write")
        fd = calls[last_write][1]
        assert ("fsync", fd) in calls[last_write + 1 :], calls
        calls.clear()
    journal.close()


@pytest.mark.parametrize("damage", ["cut mid-frame", "bad checksum", "cut mid-length"])
def test_a_torn_last_record_is_ignored_and_cut_off_before_the_next_append(
    tmp_path: Path, damage: str
) -> None:
    """A crash mid-write leaves part of a frame: what precedes it is read, it is not, and
    the replayer's own appends follow the last whole frame."""
    journal = journal_in(tmp_path)
    first, second, torn = entry("first"), entry("second"), entry("torn")
    journal.keep(first)
    journal.keep(second)
    journal.close()
    whole = journal.path.stat().st_size
    tail = frame(torn)
    if damage == "cut mid-frame":
        tail = tail[: len(tail) // 2]
    elif damage == "bad checksum":
        tail = tail[:-1] + bytes([tail[-1] ^ 0xFF])
    else:
        tail = tail[:3]
    with journal.path.open("ab") as handle:
        handle.write(tail)

    [orphan] = orphans(tmp_path)
    assert [one for one, _ in orphan.unwritten.values()] == [first, second]
    assert journal.path.stat().st_size == whole  # the torn tail is gone
    orphan.append(Written(reply_id=first.reply_id))
    orphan.close()
    [again] = orphans(tmp_path)
    assert [one for one, _ in again.unwritten.values()] == [second]
    again.close()


def test_reading_stops_at_the_first_frame_that_does_not_decode() -> None:
    good = frame(entry())
    garbage = b"\x00\x00\x00\x03" + (0x8C8B7F11).to_bytes(4, "big") + b"abc"
    records, valid = read_records(good + garbage + frame(entry()))
    assert len(records) == 1
    assert valid == len(good)


def test_a_live_owners_journal_is_never_claimed_and_a_claimed_one_only_once(
    tmp_path: Path,
) -> None:
    owner = journal_in(tmp_path)
    owner.keep(entry())
    assert orphans(tmp_path) == []  # its owner holds the lock
    owner.close()
    [first] = orphans(tmp_path)
    assert orphans(tmp_path) == []  # another replayer holds it now
    first.close()
    [second] = orphans(tmp_path)
    second.remove()
    assert orphans(tmp_path) == []
    assert os.listdir(tmp_path) == []


def test_scratch_files_of_dead_processes_are_removed_once_stale(tmp_path: Path) -> None:
    """A journal is created (and compacted) under a scratch name, locked, then renamed: a
    process that died in between leaves the scratch file, which nothing needs."""
    header = JournalHeader(
        database=DATABASE, instance=uuid.uuid4(), pid=os.getpid(), created_at=datetime.now(UTC)
    )
    live = JournalFile._scratch(tmp_path / f"{uuid.uuid4()}{SUFFIX}", header)
    dead = JournalFile._scratch(tmp_path / f"{uuid.uuid4()}{SUFFIX}", header)
    dead.close()  # its process died: the lock is gone
    young = JournalFile._scratch(tmp_path / f"{uuid.uuid4()}{SUFFIX}", header)
    young.close()
    old = time.time() - SCRATCH_STALE_S - 1
    for scratch in (live.path, dead.path):
        os.utime(scratch, (old, old))
    assert orphans(tmp_path) == []  # never read as journals
    assert sorted(os.listdir(tmp_path)) == sorted([live.path.name, young.path.name])
    live.close()


def test_journals_of_another_database_are_left_alone(tmp_path: Path) -> None:
    other = journal_in(tmp_path, database="postgresql://elsewhere:5432/db")
    other.keep(entry())
    other.close()
    assert orphans(tmp_path) == []
    assert other.path.exists()
    assert len(orphans(tmp_path, "postgresql://elsewhere:5432/db")) == 1


def test_a_file_torn_inside_its_header_holds_nothing_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / f"{uuid.uuid4()}{SUFFIX}"
    path.write_bytes(b"\x00\x00\x00")
    assert orphans(tmp_path) == []
    assert not path.exists()


def test_past_its_bound_the_journal_compacts_then_refuses(tmp_path: Path) -> None:
    size = len(frame(entry("x" * 1000)))
    journal = journal_in(tmp_path, max_bytes=200 + 3 * size)
    kept = [entry("x" * 1000) for _ in range(3)]
    for one in kept:
        journal.keep(one)
    with pytest.raises(JournalFullError, match="bound"):
        journal.keep(entry("x" * 1000))
    # Two written: their Written records would not fit, the compaction makes room.
    journal.written(kept[0].reply_id)
    journal.written(kept[1].reply_id)
    more = [entry("x" * 1000), entry("x" * 1000)]
    for one in more:
        journal.keep(one)
    assert journal.path.stat().st_size <= journal.max_bytes
    assert journal.close() == 3
    [orphan] = orphans(tmp_path)
    assert [one for one, _ in orphan.unwritten.values()] == [kept[2], *more]
    orphan.close()
    assert [p.name for p in tmp_path.iterdir()] == [journal.path.name]


def test_an_outcome_larger_than_the_bound_is_refused_without_a_file(tmp_path: Path) -> None:
    journal = journal_in(tmp_path / "small", max_bytes=1024)
    with pytest.raises(JournalFullError):
        journal.keep(entry("x" * 1000))
    assert not (tmp_path / "small").exists()
    journal.keep(entry("fits"))
    assert journal.close() == 1


def test_the_directory_defaults_beside_the_sqlite_file_or_under_switchboard(
    tmp_path: Path,
) -> None:
    sqlite = load_settings({"SWITCHBOARD_DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite"})
    assert journal_directory(sqlite) == tmp_path / "s.sqlite.outcomes"
    pg = load_settings({"SWITCHBOARD_DATABASE_URL": "postgresql://u:pw@h:5433/db"})
    assert journal_directory(pg) == (tmp_path.cwd() / ".switchboard" / "outcomes")
    chosen = load_settings(
        {"SWITCHBOARD_DATABASE_URL": "postgresql://h/db", "SWITCHBOARD_OUTCOME_JOURNAL_DIR": "j"}
    )
    assert journal_directory(chosen) == tmp_path.cwd() / "j"


# Replays into a real database, as the next process does.


async def _pending(text: str) -> tuple[Party, Exchange]:
    party = await new_party()
    return party, await Exchanges(busy_timeout_s=0).begin(party.says(text))


def _entry_of(exchange: Exchange, text: str) -> UnwrittenOutcome:
    return entry(
        text,
        reply_id=exchange.assistant_message.id,
        conversation_id=exchange.assistant_message.conversation_id,
        owner_instance=exchange.instance_id,
        config=None,
    )


def _dead_journal(directory: Path, database: str, entries: list[UnwrittenOutcome]) -> Path:
    journal = OutcomeJournal(
        directory, database=database, instance=uuid.uuid4(), max_bytes=1024 * 1024
    )
    for one in entries:
        journal.keep(one)
    assert journal.close() == len(entries)
    return journal.path


async def _stored(exchange: Exchange) -> tuple[str, str, str | None]:
    reply = await messages.get_message(exchange.assistant_message.id)
    return reply.status, reply.content, reply.error.code if reply.error else None


async def test_replay_writes_each_outcome_once_even_when_done_twice(
    db: object, tmp_path: Path
) -> None:
    """The next process writes what a stopped one journaled, including over the
    ``interrupted`` a sweep left; a replay cut short (the file copied back as it was)
    lands nothing twice and fails nothing."""
    database = "journal-replay"
    parties, waiting = zip(*[await _pending(f"question {i}") for i in range(3)], strict=True)
    entries = [_entry_of(one, f"answer {i}") for i, one in enumerate(waiting)]
    # A journal written since the ledger names the key charged; an older one does not
    # (the conversation's owner is charged then).
    entries[0].owner = parties[0].owner
    path = _dead_journal(tmp_path, database, entries)
    before = path.read_bytes()
    # The dead process's replies, retired by a sweep before the replay (as the sweep
    # does): their owner (the journal, for it) still finishes them.
    for one in waiting:
        await fetch(
            "UPDATE message SET status = 'failed', error_code = 'interrupted' WHERE id = {}",
            one.assistant_message.id,
        )

    replayer = OutcomeBacklog(
        journal=OutcomeJournal(
            tmp_path, database=database, instance=uuid.uuid4(), max_bytes=1 << 20
        )
    )
    assert await replayer.replay_orphans() == 1
    assert [await _stored(one) for one in waiting] == [
        ("complete", f"answer {i}", None) for i in range(3)
    ]
    assert not path.exists()

    # As if the replay crashed after its writes, before noting them.
    path.write_bytes(before)
    assert await replayer.replay_orphans() == 1
    assert [await _stored(one) for one in waiting] == [
        ("complete", f"answer {i}", None) for i in range(3)
    ]
    assert os.listdir(tmp_path) == []
    assert await replayer.replay_orphans() == 0
    # One ledger row per exchange, however often its outcome was replayed.
    ledger = await fetch(
        "SELECT id, owner_key, conversation, status, prompt_tokens, completion_tokens "
        "FROM usage_ledger ORDER BY prompt_tokens"
    )
    assert sorted((str(row["id"]), str(row["owner_key"])) for row in ledger) == sorted(
        (str(one.assistant_message.id), str(party.owner))
        for party, one in zip(parties, waiting, strict=True)
    )
    assert {(row["status"], row["prompt_tokens"], row["completion_tokens"]) for row in ledger} == {
        ("complete", 3, 4)
    }


async def test_replay_never_overwrites_a_reply_that_ended_otherwise(
    db: object, tmp_path: Path
) -> None:
    """A journaled outcome for a reply that is no longer its owner's to finish (written
    differently meanwhile), or whose conversation was deleted, is dropped (logged), and
    the journal is done with either way."""
    database = "journal-replay"
    _, ended = await _pending("ended")
    party, deleted = await _pending("deleted")
    await messages.finish_exchange(
        ended.assistant_message.id, ReplyOutcome(status="cancelled", content="partial")
    )
    await conversations.delete_conversation(party.owner, party.conversation_id)
    _dead_journal(tmp_path, database, [_entry_of(ended, "late"), _entry_of(deleted, "gone")])

    replayer = OutcomeBacklog(
        journal=OutcomeJournal(
            tmp_path, database=database, instance=uuid.uuid4(), max_bytes=1 << 20
        )
    )
    assert await replayer.replay_orphans() == 1
    assert await _stored(ended) == ("cancelled", "partial", None)
    assert os.listdir(tmp_path) == []


# What the client is told depends on the journal: a recorder whose database is down.


@pytest.fixture
async def database_down(tmp_path: Path) -> AsyncIterator[None]:
    """The test runs on a database that cannot be opened (its file is missing)."""
    with using(engine_from_url(f"sqlite:///{tmp_path}/gone/switchboard.sqlite")):
        yield


def _exchange() -> Exchange:
    conversation_id = uuid.uuid4()
    question, reply = (
        MessageOut(
            id=uuid.uuid4(),
            conversation_id=conversation_id,
            seq=seq,
            role=role,
            content=content,
            status=status,
            created_at=datetime.now(UTC),
        )
        for seq, role, content, status in [
            (1, "user", "question", "complete"),
            (2, "assistant", "", "pending"),
        ]
    )
    return Exchange(
        turns=[question],
        assistant_message=reply,
        prompt=[],
        config=None,
        model="m",
        instance_id=uuid.uuid4(),
    )


@pytest.mark.parametrize("journal_room", ["room", "full"])
async def test_the_client_is_told_whether_its_reply_survives_a_stop(
    database_down: None, tmp_path: Path, journal_room: str
) -> None:
    journal = OutcomeJournal(
        tmp_path,
        database=DATABASE,
        instance=uuid.uuid4(),
        max_bytes=1024 * 1024 if journal_room == "room" else 64,
    )
    backlog = OutcomeBacklog(retry_s=0.2, journal=journal)
    exchange = _exchange()
    outcome = ReplyOutcome(status="complete", content="the whole answer")
    with pytest.raises(ReplyNotRecordedError) as raised:
        await ReplyRecorder(exchange, backlog).record(outcome)
    error = raised.value
    assert error.details is not None
    assert error.details["content"] == "the whole answer"
    kept = journal_room == "room"
    assert error.details["kept_on_disk"] is kept
    if kept:
        assert "kept on disk, so a restart of the gateway does not lose it" in error.message
        # On disk before the client was told: what the next process would replay.
        records, _ = read_records(journal.path.read_bytes())
        assert [one.reply_id for one in records if isinstance(one, UnwrittenOutcome)] == [
            exchange.assistant_message.id
        ]
    else:
        assert "lost if the gateway stops first" in error.message
    await backlog.close(0)
    if kept:
        [orphan] = orphans(tmp_path)
        [(entry, _)] = orphan.unwritten.values()
        assert entry.reply_id == exchange.assistant_message.id
        assert entry.owner_instance == exchange.instance_id
        assert entry.outcome == outcome
        orphan.close()
    else:
        assert os.listdir(tmp_path) == []
