"""History exports: conversations and their messages to JSONL, CSV or Parquet files.

``service.export_history`` runs one export (the export flow, ``switchboard flows run
export``, a notebook); ``schemas`` documents the columns (one row per message, with its
conversation and its configuration's name and version; ``schema_version`` 2); ``source``
reads the database, ``writers`` the formats, ``destinations`` folders and buckets,
``watermarks`` how far each series has got. The incremental rule, what a failed run
leaves and what happens to deleted conversations are in ``service``'s docstring.

What a destination holds after a few runs (names sort in the order the runs started)::

    history-20261129T230000.123456Z-3e2b6b8bcfe5.parquet          the rows
    history-20261129T230000.123456Z-3e2b6b8bcfe5.manifest.json    rows, bytes, sha256,
                                                                  watermark range, columns
    history-20261130T230000.654321Z-0c976ab3d41b.manifest.json    a run with nothing new

Reading a whole destination with DuckDB::

    SELECT * FROM read_parquet('exports/*.parquet');
    SELECT * FROM read_json('exports/*.jsonl', format = 'newline_delimited');
    SELECT * FROM read_csv('exports/*.csv', header = true, allow_quoted_nulls = false);

(``allow_quoted_nulls = false`` keeps an empty text, ``""``, apart from a null.) A message
changed after it was exported is exported again, with a larger ``change_seq``; its latest
version::

    SELECT * FROM read_parquet('exports/*.parquet')
    QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY change_seq DESC) = 1;
"""
