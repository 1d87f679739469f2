"""History exports: conversations and their messages to JSONL, CSV or Parquet files.

``service.export_history`` runs one export; ``schemas`` documents the columns;
``source`` reads the database, ``writers`` the formats, ``destinations`` folders and
buckets, ``watermarks`` how far each series has got.
"""
