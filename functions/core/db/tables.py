"""Switchboard's tables. Only the services in ``functions.core.<domain>`` touch these.

PostgreSQL types where they matter (UUID ids, timestamptz, JSONB); Piccolo maps each to an
equivalent on SQLite. Composite, ordered, partial and composite-unique indexes live in a
raw-SQL migration (``piccolo_migrations/core_2026_11_26t05_20_00_indexes.py``): Piccolo's
``Unique`` constraint is emitted as ``ALTER TABLE ... ADD CONSTRAINT``, which SQLite
cannot run.
"""

from __future__ import annotations

from piccolo.columns import (
    JSONB,
    UUID,
    Array,
    BigInt,
    Boolean,
    Bytea,
    DoublePrecision,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class ApiKey(Table, tablename="api_key"):
    """A caller's credential. Only a SHA-256 hash of the secret is stored."""

    id = UUID(primary_key=True)
    name = Varchar(length=100)
    # The first characters of the secret, shown in listings and used to find the row.
    prefix = Varchar(length=16, index=True)
    key_hash = Varchar(length=64, unique=True)
    scopes = Array(base_column=Varchar(length=16))
    created_at = Timestamptz(default=TimestamptzNow())
    last_used_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)
    # Limits (functions/core/limits): NULL takes the gateway's default for that limit.
    requests_per_minute = Integer(null=True, default=None)
    tokens_per_minute = BigInt(null=True, default=None)
    max_concurrent = Integer(null=True, default=None)
    tokens_per_day = BigInt(null=True, default=None)
    tokens_per_month = BigInt(null=True, default=None)
    # Access: after ``expires_at`` the key is refused like a revoked one (NULL: never); the
    # configurations (names) and models it may send to (NULL: any; both apply when both
    # are set, ``keys.schemas.KeyAccess``).
    expires_at = Timestamptz(null=True, default=None)
    allowed_configs = Array(base_column=Varchar(length=100), null=True, default=None)
    allowed_models = Array(base_column=Varchar(length=200), null=True, default=None)


class LLMConfig(Table, tablename="llm_config"):
    """One immutable version of a named LLM configuration.

    Editing a configuration inserts the next version; messages point at the exact row
    that produced them. ``is_default`` is only ever set on the latest version of one name.
    """

    id = UUID(primary_key=True)
    name = Varchar(length=100, index=True)
    version = Integer()
    model = Varchar(length=200)
    temperature = DoublePrecision(null=True, default=None)
    top_p = DoublePrecision(null=True, default=None)
    max_tokens = Integer(null=True, default=None)
    stop = Array(base_column=Text(), null=True, default=None)
    seed = BigInt(null=True, default=None)
    system_prompt = Text(null=True, default=None)
    history_window = Integer(null=True, default=None)
    extra = JSONB(default={})
    is_default = Boolean(default=False)
    created_at = Timestamptz(default=TimestamptzNow())
    archived_at = Timestamptz(null=True, default=None)
    # At most this many replies of this configuration at once, gateway-wide (NULL: no cap).
    max_concurrent = Integer(null=True, default=None)


class Conversation(Table, tablename="conversation"):
    """A chat thread owned by one API key."""

    id = UUID(primary_key=True)
    # Indexed together with updated_at by conversation_owner_recency_idx.
    owner_key = ForeignKey(references=ApiKey, on_delete=OnDelete.cascade)
    config_name = Varchar(length=100, null=True, default=None)
    title = Varchar(length=500, default="")
    metadata = JSONB(default={})
    # The last message sequence number handed out; bumped under a row lock so concurrent
    # sends get distinct, gap-free numbers.
    last_seq = Integer(default=0)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    # A branch (``functions.core.threads``): the stored message it forked from and that
    # message's conversation. Not foreign keys: deleting the original keeps the branch,
    # which holds its whole history as its own turns.
    forked_from_conversation_id = UUID(null=True, default=None)
    forked_from_message_id = UUID(null=True, default=None)


class ConfigEpoch(Table, tablename="config_epoch"):
    """One row counting configuration changes, so a cached view of them can be checked.

    Every configuration write bumps it in the same transaction; a send passes the epoch it
    resolved its configuration under and the claim refuses if it moved (then the sender
    reads again). Configuration rules stay in Python; the database only compares numbers.
    """

    id = Integer(primary_key=True)
    epoch = BigInt(default=0)


class Message(Table, tablename="message"):
    """One turn of a conversation, with everything needed to audit how it was produced."""

    id = UUID(primary_key=True)
    conversation = ForeignKey(references=Conversation, on_delete=OnDelete.cascade)
    seq = Integer()
    role = Varchar(length=16)
    # The text of the turn; for a turn sent as content parts, their text parts joined, and
    # the parts themselves (images, audio, ...) exactly as sent in ``content_parts``.
    content = Text(default="")
    content_parts = JSONB(null=True, default=None)
    # OpenAI tool calling: an assistant turn's calls, a tool turn's answer to one of them.
    tool_calls = JSONB(null=True, default=None)
    tool_call_id = Varchar(length=200, null=True, default=None)
    name = Varchar(length=200, null=True, default=None)
    status = Varchar(length=16, default="complete")
    llm_config = ForeignKey(
        references=LLMConfig, on_delete=OnDelete.restrict, null=True, default=None
    )
    model = Varchar(length=200, null=True, default=None)
    prompt_tokens = Integer(null=True, default=None)
    completion_tokens = Integer(null=True, default=None)
    latency_ms = DoublePrecision(null=True, default=None)
    ttft_ms = DoublePrecision(null=True, default=None)
    finish_reason = Varchar(length=32, null=True, default=None)
    error_code = Varchar(length=64, null=True, default=None)
    error_message = Text(null=True, default=None)
    upstream_request_id = Varchar(length=200, null=True, default=None)
    # The process (``process_lease.id``) generating a pending reply: while its lease is
    # alive the reply is really being generated; once it lapses the reply is retired.
    owner_instance = UUID(null=True, default=None)
    # When a reply still pending is certainly abandoned, whatever the leases say: its
    # creation plus its owner's bound (the owner's timeouts, never a sweeper's). NULL for
    # replies stored before it existed: those are judged by the sweeper's bound.
    stale_after = Timestamptz(null=True, default=None)
    # Indexed with id by message_created_id_idx, for exports.
    created_at = Timestamptz(default=TimestamptzNow())
    completed_at = Timestamptz(null=True, default=None)
    # Which change wrote this version of the row, set by a trigger on every insert and
    # update (the writing transaction's id on PostgreSQL, a counter on SQLite; 0 before the
    # trigger existed): exports take messages in this order. Indexed with id for finished
    # messages by message_change_seq_idx.
    change_seq = BigInt(default=0)
    # The chain hash of the history ending on this message (``functions.core.threads``):
    # set for the turns of a threaded send and for its reply once complete; NULL otherwise
    # (and for messages stored before threading). Indexed where set (message_chain_hash_idx).
    chain_hash = Bytea(null=True, default=None)
    # What an API shows back about the request that asked for this reply (a Responses'
    # instructions, tools, metadata, sampling, previous response): NULL for replies no
    # such API asked for. Written once, by the door, when the reply is claimed.
    api_request = JSONB(null=True, default=None)


class HealthCheck(Table, tablename="health_check"):
    """One upstream's verdict from one health check, as the checker recorded it.

    Indexed by upstream and newest first (``health_check_upstream_recency_idx``, in its
    migration) so the latest verdict per upstream is an index lookup.
    """

    id = UUID(primary_key=True)
    checked_at = Timestamptz(default=TimestamptzNow())
    # The base URL without credentials (``UpstreamHealth.url``).
    upstream = Varchar(length=500)
    status = Varchar(length=16)
    latency_ms = DoublePrecision(null=True, default=None)
    models = JSONB(default=[])
    gauges = JSONB(default={})
    is_simulator = Boolean(default=False)
    error = Text(null=True, default=None)


class ProcessLease(Table, tablename="process_lease"):
    """A serving process, alive while it keeps renewing ``expires_at`` (its heartbeat)."""

    id = UUID(primary_key=True)
    host = Varchar(length=255)
    pid = Integer()
    started_at = Timestamptz(default=TimestamptzNow())
    heartbeat_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz(default=TimestamptzNow())


class IdempotencyKey(Table, tablename="idempotency_key"):
    """A send made with an ``Idempotency-Key``: the same key and body again returns it.

    Unique per owner and key (``idempotency_key_owner_key_idx``, in its migration), so two
    concurrent sends with one key store one exchange, whichever process takes them.
    """

    id = UUID(primary_key=True)
    owner_key = ForeignKey(references=ApiKey, on_delete=OnDelete.cascade)
    key = Varchar(length=255)
    # SHA-256 of the request as the door received it: the same key with another body is
    # a client bug, answered 409.
    request_hash = Varchar(length=64)
    conversation = ForeignKey(references=Conversation, on_delete=OnDelete.cascade)
    reply = UUID()
    created_at = Timestamptz(default=TimestamptzNow())


class EvalRun(Table, tablename="eval_run"):
    """One evaluation: a dataset run through pinned configuration versions and scored.

    ``configs`` and ``scorers`` are fixed when the run is created, and the dataset is
    pinned by its hash, so resuming a run (same id) finishes the same experiment. ``report``
    holds the statistics once computed. Listed newest first by ``eval_run_created_idx``.
    """

    id = UUID(primary_key=True)
    name = Varchar(length=200, default="")
    dataset = Text(default="")
    dataset_sha256 = Varchar(length=64)
    items = Integer(default=0)
    configs = JSONB(default=[])
    scorers = JSONB(default=[])
    parameters = JSONB(default={})
    status = Varchar(length=16, default="running")
    # The key whose conversations hold the run's exchanges.
    owner_key = ForeignKey(references=ApiKey, on_delete=OnDelete.cascade)
    # The process (``process_lease.id``) running it: one process at a time.
    runner = UUID(null=True, default=None)
    report = JSONB(null=True, default=None)
    error = Text(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    finished_at = Timestamptz(null=True, default=None)


class EvalResult(Table, tablename="eval_result"):
    """One item of a run under one configuration version: the output, scores and timings.

    Unique per run, item and configuration (``eval_result_run_item_config_key``, in its
    migration): a resumed run sends only what has no row, and never records an item twice.
    """

    id = UUID(primary_key=True)
    run = ForeignKey(references=EvalRun, on_delete=OnDelete.cascade)
    item_id = Varchar(length=200)
    item_index = Integer()
    llm_config = ForeignKey(references=LLMConfig, on_delete=OnDelete.restrict)
    config_label = Varchar(length=120)
    output = Text(default="")
    scores = JSONB(default=[])
    latency_ms = DoublePrecision(null=True, default=None)
    ttft_ms = DoublePrecision(null=True, default=None)
    prompt_tokens = Integer(null=True, default=None)
    completion_tokens = Integer(null=True, default=None)
    finish_reason = Varchar(length=32, null=True, default=None)
    error_code = Varchar(length=64, null=True, default=None)
    error_message = Text(null=True, default=None)
    attempts = Integer(default=1)
    # The stored reply (``message.id``); not a foreign key, so deleting the run's
    # conversations keeps its results.
    message = UUID(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())


class ExportWatermark(Table, tablename="export_watermark"):
    """How far one export series has got, and which run is exporting it now.

    A series is a destination, a format and a selection (``functions.core.exports``): every
    change to its messages below ``exported_seq`` has been exported to it. ``run_*`` is the
    claim of the run working on it (one at a time, renewed while it runs); ``publishing``
    lists the files a committed run was still renaming into place, so the next run finishes
    the job if that one died.
    """

    id = UUID(primary_key=True)
    # SHA-256 of the series' canonical description: one row per series.
    series = Varchar(length=64, unique=True)
    destination = Varchar(length=1000)
    format = Varchar(length=16)
    selection = JSONB(default={})
    # Every change to the series' messages below this ``message.change_seq`` is exported.
    exported_seq = BigInt(null=True, default=None)
    # The watermark before change order (a completion time): read only by a series' first
    # run after the upgrade.
    exported_through = Timestamptz(null=True, default=None)
    messages_exported = BigInt(default=0)
    last_run_id = UUID(null=True, default=None)
    last_run_at = Timestamptz(null=True, default=None)
    last_manifest = Varchar(length=1000, null=True, default=None)
    run_id = UUID(null=True, default=None)
    run_host = Varchar(length=255, null=True, default=None)
    run_pid = Integer(null=True, default=None)
    run_expires_at = Timestamptz(null=True, default=None)
    publishing = JSONB(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class UsageLedger(Table, tablename="usage_ledger"):
    """One row per finished exchange: who is charged, for what, and how it went.

    Written with the reply's outcome (``messages.finish_exchange``, in the same statement
    on PostgreSQL), keyed by the reply's id so an outcome written again changes one row.
    No foreign keys: deleting a conversation (or its messages) deletes content, not
    accounting, and the usage report and quotas read this table only. Indexed by
    ``(asked_at)`` and ``(owner_key, asked_at)`` (``usage_ledger_*_idx``, in a raw-SQL
    migration).
    """

    # The reply's ``message.id``.
    id = UUID(primary_key=True)
    # The key charged: the conversation's owner (``api_key.id``).
    owner_key = UUID()
    conversation = UUID()
    # The configuration version that produced the reply (``llm_config.id``), its name and
    # version; NULL for a reply to a bare model.
    llm_config = UUID(null=True, default=None)
    config_name = Varchar(length=100, null=True, default=None)
    config_version = Integer(null=True, default=None)
    model = Varchar(length=200, null=True, default=None)
    # The vLLM server that answered (its URL without credentials); NULL when none did.
    upstream = Varchar(length=500, null=True, default=None)
    status = Varchar(length=16)
    error_code = Varchar(length=64, null=True, default=None)
    error_message = Text(null=True, default=None)
    prompt_tokens = Integer(null=True, default=None)
    completion_tokens = Integer(null=True, default=None)
    ttft_ms = DoublePrecision(null=True, default=None)
    latency_ms = DoublePrecision(null=True, default=None)
    # When the reply was asked for (its ``created_at``: reports bucket by it) and finished.
    asked_at = Timestamptz(default=TimestamptzNow())
    finished_at = Timestamptz(default=TimestamptzNow())


class StoredCompletion(Table, tablename="stored_completion"):
    """A chat completion sent with ``store: true`` through the OpenAI door: listed the
    OpenAI way (``GET /v1/chat/completions``), with the request's ``metadata``.

    Not a copy: ``id`` is the reply's ``message.id``, and the completion (its messages, its
    answer, its usage) is read from the conversation's rows. Deleting the conversation
    deletes it; deleting it only unlists it. Listed per key, oldest first, by
    ``stored_completion_owner_created_idx`` (in its migration).
    """

    # The reply's ``message.id`` (not a foreign key: the conversation's cascade removes it).
    id = UUID(primary_key=True)
    owner_key = ForeignKey(references=ApiKey, on_delete=OnDelete.cascade)
    conversation = ForeignKey(references=Conversation, on_delete=OnDelete.cascade)
    metadata = JSONB(default={})
    created_at = Timestamptz(default=TimestamptzNow())


ALL_TABLES: tuple[type[Table], ...] = (
    ApiKey,
    LLMConfig,
    ConfigEpoch,
    Conversation,
    Message,
    HealthCheck,
    ProcessLease,
    IdempotencyKey,
    EvalRun,
    EvalResult,
    ExportWatermark,
    UsageLedger,
    StoredCompletion,
)
