"""Watermarks: how far each export series has got, and who is exporting it now.

A *series* is what an incremental export continues: one destination, one format, one
selection (owner, configuration, time bounds). Its row in ``export_watermark`` holds:

- ``exported_seq``: every change to the series' messages below this ``message.change_seq``
  has been exported (so the next run takes the changes from it on). ``exported_through``,
  the time watermark used before change order, is read only by a series' first run after
  that upgrade;
- a *claim* (``run_id``, host, pid, expiry) held by the one run working on the series,
  renewed while it runs: a second run at the same time is refused, and a run that died
  (its process gone from this host, or its claim expired) is replaced by the next;
- ``publishing``: the files a committed run still has to rename into place, so that a run
  killed between its commit and its renames is finished by the next one.

The watermark moves in one guarded statement, in the same write that records which files
to publish: a run that fails or is killed before it leaves the watermark where it was.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from functions.core.db.sql import fetch, json_column
from functions.core.errors import ConflictError
from functions.core.exports.schemas import Format, Selection
from functions.core.liveness.service import process_running

if TYPE_CHECKING:
    from datetime import timedelta


class ExportRunningError(ConflictError):
    """Another run is exporting the same series right now."""

    code = "export_running"


class ExportClaimLostError(ConflictError):
    """This run's claim lapsed and another run took the series over: it must not commit."""

    code = "export_claim_lost"


class Series(msgspec.Struct, frozen=True, kw_only=True):
    """What an incremental export continues: a destination, a format, a selection."""

    destination: str
    format: Format
    selection: Selection

    @property
    def key(self) -> str:
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()


class Publish(msgspec.Struct, frozen=True, kw_only=True):
    """A file to rename into place: its temporary and final paths in the destination."""

    temp: str
    final: str


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A run's hold on a series, and what it found there."""

    series: str
    run_id: uuid.UUID
    exported_seq: int | None
    exported_through: datetime | None
    # A run that died on this series: its temporary files are to be removed, and
    # ``publishing`` (if any) are the files it had committed and not yet renamed.
    dead_run: uuid.UUID | None
    publishing: list[Publish] | None


class Watermark(msgspec.Struct, frozen=True, kw_only=True):
    """A series' progress, as stored."""

    series: str
    destination: str
    format: str
    selection: Selection
    exported_seq: int | None
    messages_exported: int
    last_run_id: uuid.UUID | None
    last_run_at: datetime | None
    last_manifest: str | None
    run_id: uuid.UUID | None


def _running_here(host: str | None, pid: int | None) -> bool | None:
    """Whether the claim's process is alive, when it ran on this host (else None)."""
    if host != socket.gethostname() or pid is None:
        return None
    return process_running(pid)


async def claim(series: Series, run_id: uuid.UUID, *, ttl: timedelta, now: datetime) -> Claim:
    """Hold ``series`` for ``run_id`` until ``now + ttl`` (renew with :func:`renew`).

    Raises :class:`ExportRunningError` while another run holds it: one whose claim has not
    expired, unless it ran on this host and its process is gone.
    """
    key = series.key
    await fetch(
        "INSERT INTO export_watermark (id, series, destination, format, selection, "
        "messages_exported, created_at, updated_at) VALUES ({}, {}, {}, {}, {}, 0, {}, {}) "
        "ON CONFLICT (series) DO NOTHING",
        uuid.uuid4(),
        key,
        series.destination,
        series.format,
        msgspec.json.encode(series.selection).decode(),
        now,
        now,
    )
    rows = await fetch(
        "SELECT exported_seq, exported_through, run_id, run_host, run_pid, run_expires_at, "
        "publishing "
        "FROM export_watermark WHERE series = {}",
        key,
    )
    row = rows[0]
    held_by: uuid.UUID | None = row["run_id"]
    if held_by is not None:
        # Alive until its claim expires, unless it ran here and its process is gone.
        alive = row["run_expires_at"] is not None and row["run_expires_at"] > now
        if alive and _running_here(row["run_host"], row["run_pid"]) is False:
            alive = False
        if alive:
            raise ExportRunningError(
                f"another export to {series.destination} ({series.format}) is running",
                details={"run_id": str(held_by), "host": row["run_host"], "pid": row["run_pid"]},
                retry_after_s=ttl.total_seconds(),
            )
    guard = "run_id IS NULL" if held_by is None else "run_id = {}"
    taken = await fetch(
        "UPDATE export_watermark SET run_id = {}, run_host = {}, run_pid = {}, "  # noqa: S608
        "run_expires_at = {}, updated_at = {} WHERE series = {} AND " + guard + " RETURNING id",
        run_id,
        socket.gethostname(),
        os.getpid(),
        now + ttl,
        now,
        key,
        *([] if held_by is None else [held_by]),
    )
    if not taken:
        raise ExportRunningError(
            f"another export to {series.destination} ({series.format}) started just now"
        )
    publishing = json_column(row["publishing"])
    return Claim(
        series=key,
        run_id=run_id,
        exported_seq=row["exported_seq"],
        exported_through=row["exported_through"],
        dead_run=held_by,
        publishing=None if publishing is None else msgspec.convert(publishing, list[Publish]),
    )


async def renew(held: Claim, *, ttl: timedelta, now: datetime) -> None:
    """Extend the claim; :class:`ExportClaimLostError` if another run has taken it over."""
    renewed = await fetch(
        "UPDATE export_watermark SET run_expires_at = {} WHERE series = {} AND run_id = {} "
        "RETURNING id",
        now + ttl,
        held.series,
        held.run_id,
    )
    if not renewed:
        raise ExportClaimLostError("this export's claim lapsed and another run took it over")


async def commit(
    held: Claim,
    *,
    through: int,
    messages: int,
    manifest: str,
    publishing: list[Publish],
    now: datetime,
) -> None:
    """Move the watermark to ``through`` and record the files to publish, in one write."""
    committed = await fetch(
        "UPDATE export_watermark SET exported_seq = {}, "
        "messages_exported = messages_exported + {}, last_run_id = {}, last_run_at = {}, "
        "last_manifest = {}, publishing = {}, updated_at = {} "
        "WHERE series = {} AND run_id = {} RETURNING id",
        through,
        messages,
        held.run_id,
        now,
        manifest,
        msgspec.json.encode(publishing).decode(),
        now,
        held.series,
        held.run_id,
    )
    if not committed:
        raise ExportClaimLostError("this export's claim lapsed and another run took it over")


async def published(held: Claim, *, now: datetime) -> None:
    """The committed files are in place: forget them, and let the series go."""
    await fetch(
        "UPDATE export_watermark SET publishing = NULL, run_id = NULL, run_host = NULL, "
        "run_pid = NULL, run_expires_at = NULL, updated_at = {} "
        "WHERE series = {} AND run_id = {}",
        now,
        held.series,
        held.run_id,
    )


async def recovered(held: Claim, *, now: datetime) -> None:
    """A dead run's committed files are in place now (this run put them there)."""
    await fetch(
        "UPDATE export_watermark SET publishing = NULL, updated_at = {} "
        "WHERE series = {} AND run_id = {}",
        now,
        held.series,
        held.run_id,
    )


async def release(held: Claim, *, now: datetime) -> None:
    """Let the series go without moving it (a failed run), unless it has committed."""
    await fetch(
        "UPDATE export_watermark SET run_id = NULL, run_host = NULL, run_pid = NULL, "
        "run_expires_at = NULL, updated_at = {} "
        "WHERE series = {} AND run_id = {} AND publishing IS NULL",
        now,
        held.series,
        held.run_id,
    )


async def get_watermark(series: Series) -> Watermark | None:
    """A series' progress, or None if it has never run."""
    rows = await fetch(
        "SELECT series, destination, format, selection, exported_seq, messages_exported, "
        "last_run_id, last_run_at, last_manifest, run_id FROM export_watermark "
        "WHERE series = {}",
        series.key,
    )
    if not rows:
        return None
    row = rows[0]
    return msgspec.convert(
        {**row, "selection": json_column(row["selection"])}, Watermark, strict=False
    )
