"""Where a replay's conversation comes from: the database, or an export file.

An export (``functions.core.exports``) holds one row per finished message with its
conversation's fields (schema versions 1 and 2). Replay reads any of its formats: JSONL, CSV
(the byte order mark and header included; an empty unquoted field is null) and Parquet
(with pyarrow, from the ``flows`` extra). Give it a data file, an export's manifest
(``*.manifest.json``: every data file it lists) or a folder of exports (every manifest in
it, so the incremental runs of a series together hold whole conversations). A message
exported twice (by a ``full`` run after incremental ones, or again after a late change) is
read once: its latest version (the largest ``change_seq``; in version 1 files, the last
file's).

A conversation must be there from its first message on, without gaps: replaying it from
the middle would send the model another history than the one its users saw.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from functions.core.conversations import service as conversations
from functions.core.db.tables import Conversation
from functions.core.errors import InvalidInputError, NotFoundError
from functions.core.exports.schemas import SCHEMA_VERSION
from functions.core.messages import service as messages
from functions.core.messages.schemas import (
    ConfigRef,
    MessageError,
    MessageOut,
    Role,
    Status,
    Usage,
)
from functions.core.replay.schemas import REPLAY_METADATA_KEY, SourceConversation

MANIFEST_SUFFIX = ".manifest.json"
DATA_SUFFIXES = (".jsonl", ".csv", ".parquet")
_PAGE = 500


async def load_conversation(
    conversation_id: uuid.UUID, *, owner: uuid.UUID | None = None
) -> SourceConversation:
    """A conversation and all its messages from the database.

    With ``owner``, only that key's conversation (another key's is not found, as over
    HTTP); without, whichever key owns it (notebooks and flows read the database directly).
    """
    row = (
        await Conversation.select(Conversation.owner_key)
        .where(Conversation.id == conversation_id)
        .first()
    )
    found = None if row is None else _uuid(row["owner_key"])
    if found is None or (owner is not None and found != owner):
        raise conversations.not_found(conversation_id)
    conversation = await conversations.get_conversation(found, conversation_id)
    stored: list[MessageOut] = []
    cursor: str | None = None
    while True:
        page = await messages.list_messages(found, conversation_id, limit=_PAGE, cursor=cursor)
        stored += page.data
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return SourceConversation(
        id=conversation_id,
        owner=found,
        title=conversation.title,
        config=conversation.config,
        metadata=conversation.metadata,
        messages=stored,
    )


async def latest_conversation_id() -> uuid.UUID:
    """The most recently active conversation that is not itself a saved replay."""
    rows = (
        await Conversation.select(Conversation.id, Conversation.metadata)
        .order_by(Conversation.updated_at, ascending=False)
        .limit(_PAGE)
        .output(load_json=True)
    )
    for row in rows:
        metadata = row["metadata"]
        if not (isinstance(metadata, dict) and REPLAY_METADATA_KEY in metadata):
            return _uuid(row["id"])
    raise NotFoundError("no conversation to replay: name one (conversation_id)")


class ExportRow(msgspec.Struct, kw_only=True):
    """The columns of an exported row that replay reads (see ``exports.schemas.COLUMNS``)."""

    schema_version: int
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    role: Role
    content: str
    content_parts: Any = None
    tool_calls: Any = None
    tool_call_id: str | None = None
    name: str | None = None
    status: Status
    config_id: uuid.UUID | None = None
    config_name: str | None = None
    config_version: int | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    finish_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    upstream_request_id: str | None = None
    created_at: datetime
    completed_at: datetime | None = None
    # Absent (0) in version 1 files.
    change_seq: int = 0
    owner_key_id: uuid.UUID
    conversation_title: str = ""
    conversation_metadata: Any = None
    conversation_config_name: str | None = None


# Columns that are never null: in CSV an empty field there is an empty string.
_TEXT_NOT_NULL = frozenset({"content", "conversation_title"})
_JSON_COLUMNS = ("content_parts", "tool_calls", "conversation_metadata")
# Version 2 added ``change_seq`` only: version 1 files read the same way.
_READABLE_VERSIONS = ("1", str(SCHEMA_VERSION))


def export_files(path: str | Path) -> list[Path]:
    """The data files behind ``path``: itself, a manifest's files, or a folder's exports."""
    where = Path(path)
    if where.is_dir():
        manifests = sorted(where.glob(f"*{MANIFEST_SUFFIX}"))
        if manifests:
            return [file for manifest in manifests for file in export_files(manifest)]
        files = sorted(p for p in where.iterdir() if p.suffix in DATA_SUFFIXES)
        if not files:
            raise InvalidInputError(
                f"{where} holds no export (no manifest, no .jsonl, .csv or .parquet file)",
                details={"field": "export_file"},
            )
        return files
    if not where.is_file():
        raise NotFoundError(f"no export file {where}", details={"field": "export_file"})
    if where.name.endswith(MANIFEST_SUFFIX):
        manifest = msgspec.json.decode(where.read_bytes())
        return [where.parent / str(item["path"]) for item in manifest.get("files", [])]
    if where.suffix not in DATA_SUFFIXES:
        raise InvalidInputError(
            f"{where}: an export is a .jsonl, .csv or .parquet file, or its manifest",
            details={"field": "export_file"},
        )
    return [where]


def read_export_rows(path: str | Path) -> list[ExportRow]:
    """Every row of the export(s) at ``path`` (see :func:`export_files`), each message once:
    its latest version."""
    rows: dict[uuid.UUID, ExportRow] = {}
    for file in export_files(path):
        for raw in _raw_rows(file):
            row = _row(raw, file)
            seen = rows.get(row.message_id)
            if seen is None or row.change_seq >= seen.change_seq:
                rows[row.message_id] = row
    return list(rows.values())


def read_export(path: str | Path, conversation_id: uuid.UUID | None = None) -> SourceConversation:
    """One conversation from an export: ``conversation_id``, or the only one it holds."""
    rows = read_export_rows(path)
    ids = {row.conversation_id for row in rows}
    if not rows:
        raise InvalidInputError(f"{path} holds no messages", details={"field": "export_file"})
    if conversation_id is None:
        if len(ids) != 1:
            raise InvalidInputError(
                f"{path} holds {len(ids)} conversations: name one (conversation_id)",
                details={"field": "conversation_id", "conversations": len(ids)},
            )
        conversation_id = ids.pop()
    mine = sorted((r for r in rows if r.conversation_id == conversation_id), key=lambda r: r.seq)
    if not mine:
        raise NotFoundError(
            f"{path} holds no message of conversation {conversation_id}",
            details={"field": "conversation_id"},
        )
    seqs = [row.seq for row in mine]
    if seqs != list(range(1, len(seqs) + 1)):
        missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
        raise InvalidInputError(
            f"{path} does not hold all of conversation {conversation_id} (messages "
            f"{_ranges(missing)} are missing): give the folder of the series' exports or "
            "the manifests of the runs that hold them",
            details={"field": "export_file", "missing": missing[:100]},
        )
    last = mine[-1]
    metadata = last.conversation_metadata
    return SourceConversation(
        id=conversation_id,
        owner=last.owner_key_id,
        title=last.conversation_title,
        config=last.conversation_config_name,
        metadata=metadata if isinstance(metadata, dict) else {},
        messages=[_message(row) for row in mine],
        source=str(path),
    )


def _raw_rows(file: Path) -> list[dict[str, Any]]:
    if file.suffix == ".jsonl":
        decode = msgspec.json.Decoder(dict[str, Any]).decode
        with file.open("rb") as lines:
            return [decode(line) for line in lines if line.strip()]
    if file.suffix == ".csv":
        text = file.read_text(encoding="utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        return [
            {k: (None if v == "" and k not in _TEXT_NOT_NULL else v) for k, v in row.items()}
            for row in reader
        ]
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = pq.read_table(file).to_pylist()
    return rows


def _row(raw: dict[str, Any], file: Path) -> ExportRow:
    for column in _JSON_COLUMNS:
        if isinstance(raw.get(column), str | bytes):
            raw[column] = msgspec.json.decode(raw[column])
    version = raw.get("schema_version")
    if str(version) not in _READABLE_VERSIONS:
        raise InvalidInputError(
            f"{file}: schema_version {version!r}; this replay reads versions "
            f"{', '.join(_READABLE_VERSIONS)}",
            details={"field": "export_file"},
        )
    try:
        return msgspec.convert(raw, ExportRow, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidInputError(
            f"{file}: not an export row: {exc}", details={"field": "export_file"}
        ) from None


def _message(row: ExportRow) -> MessageOut:
    config = None
    if row.config_id is not None and row.config_name is not None:
        config = ConfigRef(id=row.config_id, name=row.config_name, version=row.config_version or 0)
    usage = None
    if row.prompt_tokens is not None and row.completion_tokens is not None:
        usage = Usage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            total_tokens=row.prompt_tokens + row.completion_tokens,
        )
    error = None
    if row.error_code is not None:
        error = MessageError(code=row.error_code, message=row.error_message or "")
    return MessageOut(
        id=row.message_id,
        conversation_id=row.conversation_id,
        seq=row.seq,
        role=row.role,
        content=row.content,
        content_parts=row.content_parts,
        tool_calls=row.tool_calls,
        tool_call_id=row.tool_call_id,
        name=row.name,
        status=row.status,
        config=config,
        model=row.model,
        usage=usage,
        latency_ms=row.latency_ms,
        ttft_ms=row.ttft_ms,
        finish_reason=row.finish_reason,
        error=error,
        upstream_request_id=row.upstream_request_id,
        created_at=row.created_at,
        completed_at=row.completed_at,
    )


def _ranges(numbers: list[int]) -> str:
    spans: list[str] = []
    for n in numbers:
        if spans and spans[-1].split("-")[-1] == str(n - 1):
            spans[-1] = f"{spans[-1].split('-')[0]}-{n}"
        else:
            spans.append(str(n))
    return ", ".join(spans[:10]) + (" …" if len(spans) > 10 else "")


def _uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
