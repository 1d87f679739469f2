"""Writers: chunks of rows in, one file out, in JSONL, CSV or Parquet, counted and hashed.

Rows come as JSON lines or CSV lines (``source``); JSONL and CSV files are those bytes (CSV
after a byte order mark and a header), and Parquet parses the CSV lines with pyarrow into
typed columns. Every writer writes through a :class:`Sink`, which counts
the bytes and computes their SHA-256 on the way (the manifest's numbers, without reading
the file again). A writer holds one chunk at a time, Parquet at most one row group.

pyarrow is imported by the Parquet writer only: JSONL and CSV need nothing beyond the base
install.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from functions.core.exports.schemas import (
    COLUMN_NAMES,
    COLUMNS,
    SCHEMA_VERSION,
    Format,
    Kind,
    column_docs,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from functions.core.exports.source import Chunk, Shape

# Excel reads a CSV as UTF-8 only when it starts with a byte order mark; other readers
# (Python's csv with ``utf-8-sig``, DuckDB, pyarrow, LibreOffice) skip it.
UTF8_BOM = b"\xef\xbb\xbf"
CSV_HEADER = (",".join(f'"{name}"' for name in COLUMN_NAMES) + "\n").encode()
# A Parquet row group: large enough to compress and scan well, small enough for flat memory.
ROW_GROUP_ROWS = 64 * 1024
ROW_GROUP_BYTES = 8 * 1024 * 1024
PARQUET_COMPRESSION = "zstd"


class Sink:
    """A binary file being written, with the count and SHA-256 of what went into it."""

    def __init__(self, raw: BinaryIO, *, on_close: Callable[[BinaryIO], None] | None = None):
        self._raw = raw
        self._on_close = on_close
        self._digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self._raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    # What pyarrow asks of a Python file it writes to.
    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._raw.flush()
        if self._on_close is not None:
            self._on_close(self._raw)
        self._raw.close()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class Writer:
    """Chunks in, bytes out to a :class:`Sink`; ``close`` writes any footer and closes it."""

    # The lines this writer wants from the database.
    shape: Shape = "csv"

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.rows = 0

    def write(self, chunk: Chunk) -> None:
        self.sink.write(chunk.data)
        self.rows += chunk.rows

    def close(self) -> None:
        self.sink.close()

    def abort(self) -> None:
        """Give up: close the file without a footer (a temporary file, to be discarded)."""
        self.sink.close()


class JsonlWriter(Writer):
    """One JSON object per line, its keys the column names in order, UTF-8, ``\\n`` after
    each line."""

    shape: Shape = "jsonl"


class CsvWriter(Writer):
    """RFC 4180 CSV for spreadsheets: a UTF-8 byte order mark, a header, ``\\n`` lines.

    Every non-null value is quoted and null is an empty unquoted field, so an empty string
    and a missing value stay distinct. Values are written as stored: a cell that starts with
    ``=`` is text a spreadsheet may take for a formula (open untrusted exports as text).
    """

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        sink.write(UTF8_BOM + CSV_HEADER)


def _parquet_type(kind: Kind) -> Any:
    import pyarrow as pa

    if kind is Kind.INT32:
        return pa.int32()
    if kind is Kind.INT64:
        return pa.int64()
    if kind is Kind.FLOAT64:
        return pa.float64()
    if kind is Kind.TIMESTAMP:
        return pa.timestamp("us", tz="UTC")
    if kind is Kind.JSON:
        return pa.json_(pa.string())
    return pa.string()


def arrow_schema() -> Any:
    """The columns as an Arrow schema, each field documented, the version in its metadata."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(
                column.name,
                _parquet_type(column.kind),
                nullable=column.nullable,
                metadata={"doc": column.doc},
            )
            for column in COLUMNS
        ],
        metadata={
            "switchboard.schema_version": str(SCHEMA_VERSION),
            "switchboard.columns": msgspec.json.encode(column_docs()),
        },
    )


class ParquetWriter(Writer):
    """Parquet with typed columns (see :mod:`functions.core.exports.schemas`), zstd, and row
    groups of up to :data:`ROW_GROUP_ROWS` rows."""

    def __init__(self, sink: Sink) -> None:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        super().__init__(sink)
        self._schema = arrow_schema()
        # JSON columns are read as text, then given their Parquet JSON type.
        self._read = pa_csv.ReadOptions(column_names=list(COLUMN_NAMES), use_threads=False)
        self._parse = pa_csv.ParseOptions(newlines_in_values=True)
        self._convert = pa_csv.ConvertOptions(
            column_types={
                column.name: pa.string() if column.kind is Kind.JSON else field.type
                for column, field in zip(COLUMNS, self._schema, strict=True)
            },
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        self._parquet = pq.ParquetWriter(
            sink, self._schema, compression=PARQUET_COMPRESSION, write_statistics=True
        )
        self._pending: list[Any] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def write(self, chunk: Chunk) -> None:
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        parsed = pa_csv.read_csv(
            pa.BufferReader(chunk.data),
            read_options=self._read,
            parse_options=self._parse,
            convert_options=self._convert,
        )
        columns = [
            pa.ExtensionArray.from_storage(field.type, column.combine_chunks())
            if isinstance(field.type, pa.ExtensionType)
            else column
            for field, column in zip(self._schema, parsed.columns, strict=True)
        ]
        table = pa.Table.from_arrays(columns, schema=self._schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        self.rows += chunk.rows
        if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            table = pa.concat_tables(self._pending)
            self._parquet.write_table(table, row_group_size=max(table.num_rows, 1))
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def close(self) -> None:
        self._flush()
        self._parquet.close()
        super().close()


WRITERS: dict[Format, type[Writer]] = {
    "jsonl": JsonlWriter,
    "csv": CsvWriter,
    "parquet": ParquetWriter,
}


def open_writer(format: Format, sink: Sink) -> Writer:
    return WRITERS[format](sink)
