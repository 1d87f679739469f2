"""The exported row, its documented columns, and what an export is asked and answers.

One row per message, carrying its conversation: every stored field of both, and the name
and version of the configuration that produced the reply. The columns below are the
contract (``SCHEMA_VERSION``); a change to them is a new version, never a silent edit.

How each format holds a column (see :class:`Kind`):

- ``text``: a string (UTF-8 in every format; JSONL and CSV as written, Parquet ``string``).
- ``json``: structured parts (content parts, tool calls, metadata). JSONL embeds them as
  JSON values; CSV holds their compact JSON text; Parquet a ``string`` column annotated with
  Parquet's JSON logical type (DuckDB reads it as ``JSON``). Absent is null, never ``[]``.
- ``int32``: an integer (Parquet ``int32``).
- ``int64``: an integer (Parquet ``int64``).
- ``float64``: a number (Parquet ``double``).
- ``timestamp``: a time in UTC: RFC 3339 with microseconds and ``Z`` in JSONL and CSV
  (``2026-11-29T23:00:00.123456Z``), Parquet ``timestamp[us, tz=UTC]``.

Null is JSON ``null``, Parquet null, and in CSV an empty unquoted field (every non-null
value is quoted, so an empty string is ``""`` and stays distinct from null).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# Bumped whenever a column is added, removed, renamed or changes meaning or type.
# 2: ``change_seq`` (a message exported again after a late change is a new row version).
SCHEMA_VERSION = 2

Format = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet")
EXTENSIONS: dict[Format, str] = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}


class Kind(enum.Enum):
    TEXT = "text"
    JSON = "json"
    INT32 = "int32"
    INT64 = "int64"
    FLOAT64 = "float64"
    TIMESTAMP = "timestamp"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    doc: str
    nullable: bool = True


COLUMNS: tuple[Column, ...] = (
    Column("schema_version", Kind.INT32, "the version of these columns (2)", nullable=False),
    Column("message_id", Kind.TEXT, "the message's id (UUID)", nullable=False),
    Column("conversation_id", Kind.TEXT, "its conversation's id (UUID)", nullable=False),
    Column("seq", Kind.INT32, "its position in the conversation, from 1", nullable=False),
    Column("role", Kind.TEXT, "system, developer, user, assistant or tool", nullable=False),
    Column("content", Kind.TEXT, "the text (a turn sent as parts: their text)", nullable=False),
    Column("content_parts", Kind.JSON, "the OpenAI content parts exactly as sent"),
    Column("tool_calls", Kind.JSON, "an assistant turn's tool calls"),
    Column("tool_call_id", Kind.TEXT, "the tool call a tool turn answers"),
    Column("name", Kind.TEXT, "the participant or tool name of the turn"),
    Column("status", Kind.TEXT, "complete, failed or cancelled", nullable=False),
    Column("config_id", Kind.TEXT, "the configuration version that produced a reply (UUID)"),
    Column("config_name", Kind.TEXT, "that configuration's name"),
    Column("config_version", Kind.INT32, "that configuration's version number"),
    Column("model", Kind.TEXT, "the model that answered"),
    Column("prompt_tokens", Kind.INT32, "tokens in the prompt"),
    Column("completion_tokens", Kind.INT32, "tokens in the reply"),
    Column("latency_ms", Kind.FLOAT64, "request to last token, in milliseconds"),
    Column("ttft_ms", Kind.FLOAT64, "request to first token, in milliseconds"),
    Column("finish_reason", Kind.TEXT, "why the model stopped (stop, length, ...)"),
    Column("error_code", Kind.TEXT, "why a reply failed or was cancelled"),
    Column("error_message", Kind.TEXT, "that error, for a person"),
    Column("upstream_request_id", Kind.TEXT, "the request id sent to vLLM"),
    Column("owner_instance", Kind.TEXT, "the gateway process that generated a reply (UUID)"),
    Column("created_at", Kind.TIMESTAMP, "when the message was stored", nullable=False),
    Column("completed_at", Kind.TIMESTAMP, "when it was finished", nullable=False),
    Column(
        "change_seq",
        Kind.INT64,
        "the database's change that wrote this version of the message (the export order): a "
        "message changed after it was exported is exported again, with a larger change_seq; "
        "its latest version is its row with the largest",
        nullable=False,
    ),
    Column("owner_key_id", Kind.TEXT, "the API key owning the conversation (UUID)", nullable=False),
    Column(
        "conversation_title", Kind.TEXT, "the conversation's title, at export time", nullable=False
    ),
    Column("conversation_metadata", Kind.JSON, "its metadata, at export time", nullable=False),
    Column("conversation_config_name", Kind.TEXT, "its configuration, at export time"),
    Column(
        "conversation_last_seq",
        Kind.INT32,
        "its last sequence number, at export time",
        nullable=False,
    ),
    Column("conversation_created_at", Kind.TIMESTAMP, "when it was started", nullable=False),
    Column(
        "conversation_updated_at",
        Kind.TIMESTAMP,
        "its last activity, at export time",
        nullable=False,
    ),
)
COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)


class Selection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which messages a series exports: by owner, by configuration, by creation time.

    ``config`` is the conversation's configuration name (every turn of those conversations,
    the user's too). ``since`` (inclusive) and ``until`` (exclusive) bound when a message was
    stored (``created_at``); a message is still exported only once it is finished.
    """

    owner: uuid.UUID | None = None
    config: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class ExportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One export: where, in which format, which messages, and whether to start over.

    ``full`` exports every finished message the selection takes, not only those finished
    since the series' watermark, and then moves the watermark as an incremental run would.
    """

    destination: str
    format: Format = "jsonl"
    full: bool = False
    selection: Selection = Selection()


class ColumnDoc(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str
    nullable: bool
    doc: str


class ManifestFile(msgspec.Struct, frozen=True, kw_only=True):
    """A published data file: its name (relative to the destination), rows, size, digest."""

    path: str
    rows: Annotated[int, Meta(ge=0)]
    bytes: Annotated[int, Meta(ge=0)]
    sha256: str


class WatermarkRange(msgspec.Struct, frozen=True, kw_only=True):
    """The changes exported: ``change_seq`` from ``after`` (null: from the beginning) to
    below ``through`` (the next run starts at ``through``)."""

    after: int | None
    through: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """Written last, beside the data: what this export holds, and how to check it."""

    schema_version: int
    run_id: uuid.UUID
    format: Format
    destination: str
    mode: Literal["incremental", "full"]
    selection: Selection
    watermark: WatermarkRange
    messages: int
    files: list[ManifestFile]
    columns: list[ColumnDoc]
    started_at: datetime
    finished_at: datetime


class ExportResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a finished export wrote: its manifest, and where that manifest is."""

    manifest: Manifest
    manifest_path: str
    # Files a dead earlier run had committed but not yet renamed, put in place by this run.
    recovered: list[str] = msgspec.field(default_factory=list)


def column_docs() -> list[ColumnDoc]:
    return [
        ColumnDoc(
            name=column.name, type=column.kind.value, nullable=column.nullable, doc=column.doc
        )
        for column in COLUMNS
    ]
