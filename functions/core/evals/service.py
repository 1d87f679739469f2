"""Evaluation runs and their results: create, claim, record, resume, read back.

A run is created once (:func:`create_run`) with its configurations pinned to versions and
its dataset pinned by hash; running it (``runner.Evaluator``) records one
``eval_result`` per item and configuration. Resuming is running the same run again: only
the pairs with no result are sent (:func:`done_pairs`), and the unique index makes a
result impossible to record twice. One process runs a run at a time (:func:`claim_run`).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.configs import service as configs
from functions.core.db.sql import fetch, json_column
from functions.core.db.tables import ApiKey
from functions.core.errors import ConflictError, InvalidInputError, NotFoundError
from functions.core.evals.schemas import (
    EvalResultOut,
    EvalRunOut,
    EvalTarget,
    ItemScore,
    RunStatus,
    ScorerSpec,
)
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.schemas import Page, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from collections.abc import Sequence

    from functions.core.liveness.service import Lease

# The key that owns evaluation conversations when no other is named; its secret is never
# kept, so it can own conversations but not authenticate.
EVALUATION_KEY_NAME = "switchboard-evaluations"
MAX_PAGE_SIZE = 200

_RUN_COLUMNS = (
    "id, name, dataset, dataset_sha256, items, configs, scorers, parameters, status, "
    "owner_key, runner, report, error, created_at, updated_at, finished_at"
)
_RESULT_COLUMNS = (
    "item_id, item_index, llm_config, config_label, output, scores, latency_ms, ttft_ms, "
    "prompt_tokens, completion_tokens, finish_reason, error_code, error_message, attempts, "
    "message, created_at"
)
_scores = msgspec.json.Decoder(list[ItemScore])


def parse_config_ref(text: str) -> tuple[str, int | None]:
    """``name`` or ``name@version`` (a positive integer)."""
    name, sep, version = text.strip().partition("@")
    if not name or (sep and (not version.isdigit() or int(version) < 1)):
        raise InvalidInputError(
            f"{text!r}: a configuration is NAME or NAME@VERSION", details={"field": "config"}
        )
    return name, int(version) if sep else None


async def resolve_target(text: str) -> EvalTarget:
    """A configuration reference pinned to a version (``name`` means its latest now)."""
    name, version = parse_config_ref(text)
    config = await configs.get_config(name, version)
    return EvalTarget(name=config.name, version=config.version, id=config.id)


async def resolve_targets(texts: Sequence[str]) -> list[EvalTarget]:
    """Every configuration of a run, pinned; the same version twice is refused."""
    if not texts:
        raise InvalidInputError("name at least one configuration", details={"field": "config"})
    targets = [await resolve_target(text) for text in texts]
    labels = [target.label for target in targets]
    if len(set(labels)) != len(labels):
        raise InvalidInputError(
            f"a configuration version is named twice: {labels}", details={"field": "config"}
        )
    return targets


async def evaluation_owner(key: str | None = None) -> uuid.UUID:
    """The key owning a run's conversations: ``key`` (an id or an active key's exact name),
    else the evaluations key, created the first time it is needed."""
    if key is not None:
        return await find_owner(key)
    row = (
        await ApiKey.select(ApiKey.id)
        .where((ApiKey.name == EVALUATION_KEY_NAME) & ApiKey.revoked_at.is_null())
        .order_by(ApiKey.created_at)
        .first()
    )
    if row is not None:
        owner: uuid.UUID = row["id"]
        return owner
    return (await keys.create_key(ApiKeyCreate(name=EVALUATION_KEY_NAME))).id


async def find_owner(key: str) -> uuid.UUID:
    """A key by id, or by the exact name of exactly one active key."""
    try:
        key_id = uuid.UUID(key)
    except ValueError:
        rows = await ApiKey.select(ApiKey.id).where(
            (ApiKey.name == key) & ApiKey.revoked_at.is_null()
        )
        if len(rows) != 1:
            problem = "no active key" if not rows else f"{len(rows)} active keys"
            raise InvalidInputError(
                f"{problem} named {key!r}: name a key by its id", details={"field": "owner"}
            ) from None
        found: uuid.UUID = rows[0]["id"]
        return found
    if not await ApiKey.exists().where(ApiKey.id == key_id):
        raise NotFoundError(f"no API key {key_id}", details={"field": "owner"})
    return key_id


def _run_out(row: dict[str, Any], results: int = 0) -> EvalRunOut:
    values = {
        **row,
        "configs": json_column(row["configs"]),
        "scorers": json_column(row["scorers"]),
        "parameters": json_column(row["parameters"]),
        "report": json_column(row["report"]),
        "owner": row["owner_key"],
        "results": results,
    }
    return msgspec.convert(values, EvalRunOut, strict=False)


async def create_run(
    *,
    name: str,
    dataset: str,
    dataset_sha256: str,
    items: int,
    configs: Sequence[EvalTarget],
    scorers: Sequence[ScorerSpec],
    parameters: dict[str, Any],
    owner: uuid.UUID,
    run_id: uuid.UUID | None = None,
) -> EvalRunOut:
    """Store a new run (status ``running``, no runner yet)."""
    now = datetime.now(UTC)
    run_id = run_id or uuid.uuid4()
    await fetch(
        "INSERT INTO eval_run (id, name, dataset, dataset_sha256, items, configs, scorers, "
        "parameters, status, owner_key, created_at, updated_at) "
        "VALUES ({}, {}, {}, {}, {}, {}, {}, {}, 'running', {}, {}, {})",
        run_id,
        name,
        dataset,
        dataset_sha256,
        items,
        msgspec.json.encode(list(configs)).decode(),
        msgspec.json.encode(list(scorers)).decode(),
        msgspec.json.encode(parameters).decode(),
        owner,
        now,
        now,
    )
    return await get_run(run_id)


async def get_run(run_id: uuid.UUID) -> EvalRunOut:
    rows = await fetch(
        f"SELECT {_RUN_COLUMNS}, (SELECT count(*) FROM eval_result WHERE run = eval_run.id) "  # noqa: S608
        "AS results FROM eval_run WHERE id = {}",
        run_id,
    )
    if not rows:
        raise NotFoundError(f"no evaluation run {run_id}", details={"run_id": str(run_id)})
    row = rows[0]
    return _run_out(row, int(row.pop("results")))


async def find_run(prefix: str) -> EvalRunOut:
    """A run by its id, or by a unique prefix of it (as ``evals list`` shows them)."""
    try:
        return await get_run(uuid.UUID(prefix))
    except ValueError:
        pass
    cleaned = prefix.strip().lower()
    if len(cleaned) < 4 or any(ch not in "0123456789abcdef-" for ch in cleaned):
        raise InvalidInputError(f"{prefix!r} is not a run id", details={"field": "run"})
    rows = await fetch(
        "SELECT id FROM eval_run WHERE CAST(id AS TEXT) LIKE {} LIMIT 2", cleaned + "%"
    )
    if len(rows) != 1:
        problem = "no run" if not rows else "more than one run"
        raise NotFoundError(f"{problem} starts with {prefix!r}", details={"run": prefix})
    run_id = rows[0]["id"]
    return await get_run(run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(run_id))


async def list_runs(*, limit: int = 50, cursor: str | None = None) -> Page[EvalRunOut]:
    """Runs, newest first."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    if cursor is None:
        rows = await fetch(
            f"SELECT {_RUN_COLUMNS} FROM eval_run "  # noqa: S608
            "ORDER BY created_at DESC, id DESC LIMIT {}",
            limit + 1,
        )
    else:
        created, last = decode_cursor(cursor, "evals", tuple[datetime, uuid.UUID])
        rows = await fetch(
            f"SELECT {_RUN_COLUMNS} FROM eval_run WHERE (created_at, id) < ({{}}, {{}}) "  # noqa: S608
            "ORDER BY created_at DESC, id DESC LIMIT {}",
            created,
            last,
            limit + 1,
        )
    counts = await _result_counts([row["id"] for row in rows[:limit]])
    runs = [_run_out(row, counts.get(str(row["id"]), 0)) for row in rows[:limit]]
    more = len(rows) > limit
    next_cursor = encode_cursor("evals", runs[-1].created_at, str(runs[-1].id)) if more else None
    return Page(data=runs, next_cursor=next_cursor)


async def _result_counts(run_ids: Sequence[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run_id in run_ids:
        rows = await fetch("SELECT count(*) AS n FROM eval_result WHERE run = {}", run_id)
        counts[str(run_id)] = int(rows[0]["n"])
    return counts


_CLAIM = (
    "UPDATE eval_run SET runner = {}, status = 'running', error = NULL, finished_at = NULL, "
    "updated_at = {} WHERE id = {} AND "
)
_CLAIM_FREE = _CLAIM + "runner IS NULL RETURNING id"
_CLAIM_FROM = _CLAIM + "runner = {} RETURNING id"


async def claim_run(run_id: uuid.UUID, lease: Lease) -> EvalRunOut:
    """Make this process (``lease``) the run's runner; refused while another one lives.

    A runner on this host whose process is gone (killed mid-run) is recognised at once;
    one elsewhere once its lease lapses.
    """
    await lease.ensure()
    run = await get_run(run_id)
    previous = run.runner
    if previous is not None and previous != lease.instance_id:
        holders = await fetch(
            "SELECT host, pid, expires_at FROM process_lease WHERE id = {}", previous
        )
        if holders and _alive(holders[0]):
            who = f" (pid {holders[0]['pid']} on {holders[0]['host']})"
            raise ConflictError(
                f"run {run_id} is being run by another process{who}; wait for it or stop it",
                details={"run_id": str(run_id)},
            )
    now = datetime.now(UTC)
    # Taken only if nobody took it meanwhile.
    claimed = await fetch(
        _CLAIM_FREE if previous is None else _CLAIM_FROM,
        lease.instance_id,
        now,
        run_id,
        *([] if previous is None else [previous]),
    )
    if not claimed:
        raise ConflictError(
            f"run {run_id} was just taken by another process", details={"run_id": str(run_id)}
        )
    return await get_run(run_id)


def _alive(holder: dict[str, Any]) -> bool:
    """Whether a runner's lease still stands for a live process.

    A lease of this host naming a pid that no longer runs belonged to a process that died
    (``kill -9``): its run is free at once rather than when the lease lapses.
    """
    expires: datetime = holder["expires_at"]
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if expires <= datetime.now(UTC):
        return False
    if holder["host"] != socket.gethostname()[:255] or holder["pid"] == os.getpid():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


async def finish_run(
    run_id: uuid.UUID,
    status: RunStatus,
    *,
    report: dict[str, Any] | None = None,
    error: str | None = None,
) -> EvalRunOut:
    """Record how a run ended (and its report); the runner lets go of it."""
    now = datetime.now(UTC)
    await fetch(
        "UPDATE eval_run SET status = {}, report = COALESCE({}, report), error = {}, "
        "runner = NULL, updated_at = {}, finished_at = {} WHERE id = {}",
        status,
        None if report is None else msgspec.json.encode(report).decode(),
        error,
        now,
        now if status == "complete" else None,
        run_id,
    )
    return await get_run(run_id)


async def done_pairs(run_id: uuid.UUID) -> set[tuple[str, uuid.UUID]]:
    """``(item id, config version id)`` of every result the run has."""
    rows = await fetch("SELECT item_id, llm_config FROM eval_result WHERE run = {}", run_id)
    return {
        (
            row["item_id"],
            row["llm_config"]
            if isinstance(row["llm_config"], uuid.UUID)
            else uuid.UUID(row["llm_config"]),
        )
        for row in rows
    }


async def record_result(run_id: uuid.UUID, result: EvalResultOut) -> bool:
    """Store one result; False when the run already has one for that item and config."""
    stored = await fetch(
        "INSERT INTO eval_result (id, run, item_id, item_index, llm_config, config_label, "
        "output, scores, latency_ms, ttft_ms, prompt_tokens, completion_tokens, "
        "finish_reason, error_code, error_message, attempts, message, created_at) VALUES "
        "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}) "
        "ON CONFLICT (run, item_id, llm_config) DO NOTHING RETURNING id",
        uuid.uuid4(),
        run_id,
        result.item_id,
        result.item_index,
        result.config_id,
        result.config,
        result.output,
        msgspec.json.encode(result.scores).decode(),
        result.latency_ms,
        result.ttft_ms,
        result.prompt_tokens,
        result.completion_tokens,
        result.finish_reason,
        result.error_code,
        result.error_message,
        result.attempts,
        result.message_id,
        result.created_at or datetime.now(UTC),
    )
    return bool(stored)


def _result_out(row: dict[str, Any]) -> EvalResultOut:
    scores = row["scores"]
    parsed = _scores.decode(scores) if isinstance(scores, str | bytes) else scores
    values = {
        **row,
        "scores": parsed,
        "config": row["config_label"],
        "config_id": row["llm_config"],
    }
    values["message_id"] = values.pop("message")
    return msgspec.convert(values, EvalResultOut, strict=False)


async def results_of(run_id: uuid.UUID) -> list[EvalResultOut]:
    """Every result of a run, in dataset order and then configuration order."""
    rows = await fetch(
        f"SELECT {_RESULT_COLUMNS} FROM eval_result WHERE run = {{}} "  # noqa: S608
        "ORDER BY item_index, config_label",
        run_id,
    )
    return [_result_out(row) for row in rows]


async def forget_failed(run_id: uuid.UUID) -> int:
    """Forget the run's results whose item failed (an upstream error or a timeout, after
    its retries), so that resuming the run sends those items again. Scores that failed on
    a good output are kept: the output is what was paid for."""
    rows = await fetch(
        "DELETE FROM eval_result WHERE run = {} AND error_code IS NOT NULL RETURNING id", run_id
    )
    return len(rows)
