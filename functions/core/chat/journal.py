"""The outcome journal: replies the database has not taken yet, kept on local disk.

When writing a reply's outcome fails for longer than ``outcome_retry_s``, the process keeps
writing it in the background (``recorder.OutcomeBacklog``) and tells its client
``reply_not_recorded``. Before it says so, the outcome is appended to this process's
journal and fsync'd, so a stop (a deploy, a crash, ``kill -9``) loses nothing: the next
process to start replays every journal whose owner is gone.

A journal is one file per process (per runtime) in ``outcome_journal_dir``: a sequence of
frames ``[length u32][crc32 u32][msgpack record]``. The first record names the database
and the instance; then an :class:`UnwrittenOutcome` per outcome kept, and a
:class:`Written` once it is in the database (appended: nothing is rewritten in place). A
frame torn by a crash mid-write (short, or a bad checksum) ends what is read; the rest is
cut off before anything more is appended. A file with nothing left unwritten is deleted.

Ownership is an exclusive ``flock`` on the file, held by its process as long as the file is
open; the kernel drops it when the process dies, whatever kills it. Whoever replays another
process's journal takes the same lock first, without waiting: a journal is replayed by one
process at a time, and never while its owner lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec

from functions.core.db.engine import sqlite_path
from functions.core.logging import get_logger
from functions.core.messages.schemas import ConfigRef, ReplyOutcome

if TYPE_CHECKING:
    from collections.abc import Iterator

    from functions.core.settings import Settings

log = get_logger(__name__)

SUFFIX = ".journal"
# A journal being created or compacted, before it takes its name.
SCRATCH = ".new"
# A scratch file this old whose lock is free was left by a process that died mid-way.
SCRATCH_STALE_S = 60.0
_FRAME = struct.Struct(">II")  # the record's length, then its CRC-32


class JournalHeader(msgspec.Struct, tag="header", kw_only=True):
    """Whose journal this is: replayed only against the database it was written for."""

    database: str
    instance: uuid.UUID
    pid: int
    created_at: datetime


class UnwrittenOutcome(msgspec.Struct, tag="outcome", kw_only=True):
    """A reply's outcome the database has not taken yet, and everything needed to write it."""

    reply_id: uuid.UUID
    conversation_id: uuid.UUID
    # The process that generated the reply: it alone may finish a reply a sweep retired.
    owner_instance: uuid.UUID | None
    config: ConfigRef | None
    outcome: ReplyOutcome
    # The key charged in the usage ledger (None in journals written before the ledger:
    # the conversation's owner is charged then).
    owner: uuid.UUID | None = None


class Written(msgspec.Struct, tag="written", kw_only=True):
    """The outcome of ``reply_id`` is in the database (or can never be: it was dropped)."""

    reply_id: uuid.UUID


Record = JournalHeader | UnwrittenOutcome | Written

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


class JournalFullError(Exception):
    """Keeping one more outcome would take the journal past ``outcome_journal_max_bytes``."""


def database_identity(database_url: str) -> str:
    """The database a journal belongs to, without credentials: host, port and name on
    PostgreSQL, the file's absolute path on SQLite."""
    if database_url.startswith("sqlite:///"):
        return f"sqlite:{sqlite_path(database_url).absolute()}"
    url = urlsplit(database_url)
    return f"postgresql://{url.hostname or ''}:{url.port or 5432}{url.path}"


def journal_directory(settings: Settings) -> Path:
    """``outcome_journal_dir``, or by default beside the SQLite file, or under
    ``.switchboard/`` in the working directory for PostgreSQL (made absolute at start)."""
    if settings.outcome_journal_dir:
        return Path(settings.outcome_journal_dir).absolute()
    if settings.is_sqlite:
        database = sqlite_path(settings.database_url).absolute()
        return database.with_name(database.name + ".outcomes")
    return Path(".switchboard", "outcomes").absolute()


def frame(record: Record) -> bytes:
    body = _encoder.encode(record)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def read_records(data: bytes) -> tuple[list[Record], int]:
    """The records of a journal's bytes, and how many bytes they span: reading stops at the
    first frame that is short, fails its checksum or does not decode (a torn write)."""
    records: list[Record] = []
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        body = data[pos + _FRAME.size : pos + _FRAME.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            break
        try:
            records.append(_decoder.decode(body))
        except msgspec.DecodeError:
            break
        pos += _FRAME.size + length
    return records, pos


def _fsync_dir(directory: Path) -> None:
    """Make a file's creation, rename or removal durable (its directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalFile:
    """One journal file this process holds the lock of: append to it, know what is open.

    Not thread-safe by itself (:class:`OutcomeJournal` serialises its own file's use).
    """

    def __init__(self, path: Path, fd: int, header: JournalHeader | None, size: int) -> None:
        self.path = path
        self.header = header
        self._fd = fd
        self.size = size
        # Each outcome not written yet, with the size of its frame (for compaction).
        self.unwritten: dict[uuid.UUID, tuple[UnwrittenOutcome, int]] = {}

    @classmethod
    def create(cls, path: Path, header: JournalHeader) -> JournalFile:
        """A new file at ``path`` holding ``header``, readable by this user only, and
        locked before it takes its name: a replayer never finds it unlocked and empty."""
        journal = cls._scratch(path, header)
        try:
            os.replace(journal.path, path)
        except BaseException:
            journal.remove()
            raise
        journal.path = path
        _fsync_dir(path.parent)
        return journal

    @classmethod
    def _scratch(cls, path: Path, header: JournalHeader) -> JournalFile:
        """A locked file beside ``path`` (named ``<path>.new``) holding ``header``."""
        scratch = path.with_name(path.name + SCRATCH)
        scratch.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()  # this process's own, left by a failed attempt
        fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            journal = cls(scratch, fd, header, 0)
            journal._write(frame(header))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                scratch.unlink()
            raise
        return journal

    @classmethod
    def claim(cls, path: Path) -> JournalFile | None:
        """Lock and read another process's journal; ``None`` if its owner (or another
        replayer) holds it, or it was removed or replaced meanwhile."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            # The owner may have removed or compacted it between our open and our lock:
            # then what we hold is no longer the journal at this path.
            if os.fstat(fd).st_ino != path.stat().st_ino:
                os.close(fd)
                return None
            with open(fd, "rb", closefd=False) as handle:
                data = handle.read()
            records, valid = read_records(data)
            if valid < len(data):
                log.warning(
                    "chat.journal_torn_tail", journal=str(path), ignored_bytes=len(data) - valid
                )
                os.ftruncate(fd, valid)
                os.fsync(fd)
        except FileNotFoundError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        header = records[0] if records and isinstance(records[0], JournalHeader) else None
        journal = cls(path, fd, header, valid)
        for record in records:
            journal._note(record, len(frame(record)))
        return journal

    def append(self, record: UnwrittenOutcome | Written) -> None:
        """Append ``record`` and fsync it: once this returns, a crash does not lose it."""
        data = frame(record)
        self._write(data)
        self._note(record, len(data))

    def rewrite(self) -> None:
        """Compact: replace the file by one holding the header and what is still unwritten.

        The new file is locked before it takes the path, so no replayer ever holds it; one
        that locked the old file after we let it go sees it is no longer at the path.
        """
        if self.header is None:
            raise RuntimeError("a journal without its header cannot be compacted")
        fresh = JournalFile._scratch(self.path, self.header)
        try:
            for entry, _ in self.unwritten.values():
                fresh.append(entry)
            os.replace(fresh.path, self.path)
        except BaseException:
            fresh.remove()
            raise
        os.close(self._fd)
        self._fd, self.size = fresh._fd, fresh.size
        fresh._fd = -1
        _fsync_dir(self.path.parent)

    def remove(self) -> None:
        """Delete the file (nothing in it is needed any more) and let its lock go."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()
        _fsync_dir(self.path.parent)

    def close(self) -> None:
        """Let the lock go, keeping the file for the next process to replay."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write(self, data: bytes) -> None:
        os.lseek(self._fd, self.size, os.SEEK_SET)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except BaseException:
            # Cut a partial frame off: the next append must follow a whole one.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def _note(self, record: Record, size: int) -> None:
        if isinstance(record, UnwrittenOutcome):
            self.unwritten[record.reply_id] = (record, size)
        elif isinstance(record, Written):
            self.unwritten.pop(record.reply_id, None)

    @property
    def live_bytes(self) -> int:
        """What a compacted file would hold."""
        header = len(frame(self.header)) if self.header is not None else 0
        return header + sum(size for _, size in self.unwritten.values())


class OutcomeJournal:
    """This process's journal in ``directory``; its file exists only while it holds an
    outcome not written yet (created at the first one kept, deleted when the last is
    written). Thread-safe: the recorder calls it from worker threads (each append is an
    fsync)."""

    def __init__(
        self, directory: Path, *, database: str, instance: uuid.UUID, max_bytes: int
    ) -> None:
        self.directory = directory
        self.database = database
        self.instance = instance
        self.max_bytes = max_bytes
        self.path = directory / f"{instance}{SUFFIX}"
        self._file: JournalFile | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings, instance: uuid.UUID) -> OutcomeJournal:
        """The journal of the runtime ``instance`` (its lease), where the settings say."""
        return cls(
            journal_directory(settings),
            database=database_identity(settings.database_url),
            instance=instance,
            max_bytes=settings.outcome_journal_max_bytes,
        )

    @property
    def unwritten(self) -> int:
        """How many outcomes kept here are not in the database yet."""
        with self._lock:
            return len(self._file.unwritten) if self._file is not None else 0

    def keep(self, entry: UnwrittenOutcome) -> None:
        """Append ``entry``, fsync'd. Raises :class:`JournalFullError` past the bound (a
        compaction is tried first), or the ``OSError`` of a disk that refuses it."""
        size = len(frame(entry))
        with self._lock:
            journal = self._file
            if journal is None:
                header = JournalHeader(
                    database=self.database,
                    instance=self.instance,
                    pid=os.getpid(),
                    created_at=datetime.now(UTC),
                )
                used = len(frame(header))
            else:
                if journal.size + size > self.max_bytes and journal.live_bytes < journal.size:
                    journal.rewrite()
                used = journal.size
            if used + size > self.max_bytes:
                raise JournalFullError(
                    f"the outcome journal {self.path} holds {used} bytes; one more "
                    f"outcome ({size} bytes) would pass its bound of {self.max_bytes}"
                )
            if journal is None:
                journal = self._file = JournalFile.create(self.path, header)
            journal.append(entry)

    def written(self, reply_id: uuid.UUID) -> None:
        """``reply_id``'s outcome is in the database: recorded so, or the file deleted once
        nothing in it is left to write."""
        with self._lock:
            journal = self._file
            if journal is None or reply_id not in journal.unwritten:
                return
            if len(journal.unwritten) == 1:
                self._file = None
                journal.remove()
            else:
                journal.append(Written(reply_id=reply_id))

    def close(self) -> int:
        """Let the file go (deleted if empty, else kept for the next start); returns how
        many outcomes it still holds."""
        with self._lock:
            journal, self._file = self._file, None
            if journal is None:
                return 0
            left = len(journal.unwritten)
            if left:
                journal.close()
            else:
                journal.remove()
            return left


def claim_orphans(
    directory: Path, *, database: str, skip: Path | None = None
) -> Iterator[JournalFile]:
    """Each journal in ``directory`` whose owner is gone, locked for the caller (who must
    close or remove it). Journals of another database are left alone, and so are files
    still locked by their owner or another replayer."""
    try:
        paths = sorted(directory.glob(f"*{SUFFIX}"))
        _remove_stale_scratch(directory)
    except OSError:
        return
    for path in paths:
        if path == skip:
            continue
        journal = JournalFile.claim(path)
        if journal is None:
            continue
        if journal.header is None:
            # Torn before its header was whole: the owner never kept anything in it.
            journal.remove()
            continue
        if journal.header.database != database:
            log.debug("chat.journal_other_database", journal=str(path))
            journal.close()
            continue
        yield journal


def _remove_stale_scratch(directory: Path) -> None:
    """Scratch files of processes that died creating or compacting a journal: nothing in
    them is needed (a compacted journal is whole at its own name until it is replaced)."""
    for scratch in directory.glob(f"*{SUFFIX}{SCRATCH}"):
        try:
            # Young ones may be between their creation and their lock.
            if time.time() - scratch.stat().st_mtime < SCRATCH_STALE_S:
                continue
        except FileNotFoundError:
            continue
        leftover = JournalFile.claim(scratch)
        if leftover is not None:
            log.info("chat.journal_scratch_removed", file=str(scratch))
            leftover.remove()
