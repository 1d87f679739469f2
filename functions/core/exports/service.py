"""Exporting conversation history: incremental, atomic, flat in memory.

:func:`export_history` is the one way history leaves Switchboard (the export flow, the
CLI, a notebook). One run:

1. **Claims** its series (destination, format, selection; ``watermarks``), finishing or
   cleaning up after a run that died on it.
2. **Streams** every finished message changed since the series' watermark, up to every
   change committed as the run starts, from the database in batches (``source``) into one
   file under a temporary name (``writers``, ``destinations``).
3. **Commits**: moves the watermark and records the files to publish, in one write.
4. **Publishes**: renames the data file, then the manifest, into place.

The incremental rule. Every write of a message stamps it with the database's change order
(``change_seq``; ``source`` explains why no change can appear below a run's window once it
is read). A message is exported once it is finished (``completed_at`` set: complete,
failed or cancelled; a reply still pending waits for a later run), by the first run whose
window ``[watermark, through)`` holds its stamp, ``through`` being read as the run starts:
a message finished a moment before a run is in it. Windows never overlap, so incremental
runs never export a version of a message twice. A finished message changed later (a reply
retired as ``interrupted`` while its process was cut off, then finished by that process)
is stamped again and exported again by the next run, as a new row version: consumers keep
each message's row with the largest ``change_seq``.

A failed or killed run publishes nothing and leaves the watermark where it was: its
temporary files are removed by itself or, if it was killed, by the next run on the series.

Deleted conversations: deleting one deletes its messages. Those already exported stay in
the files written before (an export is an append-only log, never rewritten); those not yet
exported are gone and never exported. Rows carry their conversation's title, metadata
and configuration as they are when the row is exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from functions.core.exports import watermarks
from functions.core.exports.destinations import Destination, open_destination
from functions.core.exports.schemas import (
    EXTENSIONS,
    SCHEMA_VERSION,
    ExportRequest,
    ExportResult,
    Manifest,
    ManifestFile,
    Selection,
    WatermarkRange,
    column_docs,
)
from functions.core.exports.source import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_ROWS,
    DEFAULT_SCAN_ROWS,
    Window,
    current_watermark,
    iter_chunks,
)
from functions.core.exports.watermarks import Claim, Publish, Series
from functions.core.exports.writers import Sink, Writer, open_writer
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from functions.core.exports.source import Chunk

log = get_logger(__name__)
T = TypeVar("T")

# A run renews its claim every third of this; a run that died is replaced after it (at once
# when it ran on the same host).
CLAIM_TTL = timedelta(seconds=60)


class Tuning(msgspec.Struct, frozen=True, kw_only=True):
    """Batch sizes (the defaults suit production; tests make them small)."""

    scan_rows: int = DEFAULT_SCAN_ROWS
    batch_rows: int = DEFAULT_BATCH_ROWS
    batch_bytes: int = DEFAULT_BATCH_BYTES


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def normalize_selection(selection: Selection) -> Selection:
    """The same selection always names the same series: times in UTC (a time without a
    zone is taken as UTC, as every time Switchboard stores and shows is)."""
    return msgspec.structs.replace(
        selection, since=_utc(selection.since), until=_utc(selection.until)
    )


def series_for(request: ExportRequest, destination: Destination) -> Series:
    return Series(
        destination=destination.url,
        format=request.format,
        selection=normalize_selection(request.selection),
    )


async def export_history(
    request: ExportRequest,
    *,
    storage_options: dict[str, Any] | None = None,
    claim_ttl: timedelta = CLAIM_TTL,
    tuning: Tuning | None = None,
    now: datetime | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> ExportResult:
    """Export the series' new finished messages (all of them with ``request.full``).

    Raises :class:`~functions.core.exports.watermarks.ExportRunningError` while another run
    exports the same series. ``now`` (for tests) names the run's files. ``on_rows`` is
    called with the rows written so far after each chunk (a progress display).
    """
    destination = await asyncio.to_thread(open_destination, request.destination, storage_options)
    series = series_for(request, destination)
    started = now or datetime.now(UTC)
    run_id = uuid.uuid4()
    held = await watermarks.claim(series, run_id, ttl=claim_ttl, now=started)
    run = _Run(request, series, destination, held, claim_ttl, tuning or Tuning(), started)
    run.on_rows = on_rows
    try:
        recovered = await run.recover()
        result = await run.export(await _window(request, held), recovered)
    except BaseException:
        # Cleaned up even when this task is being cancelled (shielded, then its files
        # thread is let go once the cleanup is done).
        cleanup = asyncio.ensure_future(run.abandon())
        cleanup.add_done_callback(lambda _: run.close())
        await asyncio.shield(cleanup)
        raise
    run.close()
    log.info(
        "export.finished",
        destination=destination.url,
        format=request.format,
        messages=result.manifest.messages,
        manifest=result.manifest_path,
    )
    return result


async def _window(request: ExportRequest, held: Claim) -> Window:
    """The changes this run exports: from the series' watermark (or the beginning) to every
    change committed now. Read after the claim, so the previous run's watermark is final."""
    through = await current_watermark()
    if request.full:
        return Window(after=None, through=through)
    # The oldest running transaction never goes back; if it ever did, nothing is exported
    # twice: the window is empty.
    after = held.exported_seq
    if after is not None:
        return Window(after=after, through=max(through, after))
    # A series' first run after the upgrade to change order: its time watermark says which of
    # the rows stored before were exported.
    return Window(after=None, through=through, legacy_through=held.exported_through)


class _Run:
    """One export run's state, from claim to publication."""

    def __init__(  # noqa: PLR0917 - private, called once
        self,
        request: ExportRequest,
        series: Series,
        destination: Destination,
        held: Claim,
        claim_ttl: timedelta,
        tuning: Tuning,
        started: datetime,
    ) -> None:
        self.request = request
        self.series = series
        self.destination = destination
        self.held = held
        self.claim_ttl = claim_ttl
        self.tuning = tuning
        self.started = started
        self.committed = False
        self.on_rows: Callable[[int], None] | None = None
        self._renewed = time.monotonic()
        # One thread does this run's file work, in order: one file is written by one thread.
        self._files = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-files")

    async def _io(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._files, functools.partial(function, *args)
        )

    def close(self) -> None:
        self._files.shutdown(wait=False)

    async def recover(self) -> list[str]:
        """Finish what a dead run committed; remove what it left half-written."""
        dead, recovered = self.held.dead_run, []
        if self.held.publishing:
            for item in self.held.publishing:
                await self._io(self.destination.publish, item.temp, item.final)
                recovered.append(item.final)
            await watermarks.recovered(self.held, now=datetime.now(UTC))
            log.warning("export.recovered", run_id=str(dead), files=recovered)
        if dead is not None:
            await self._io(self.destination.remove, self.destination.run_folder(dead))
        return recovered

    async def _keep_claim(self) -> None:
        if time.monotonic() - self._renewed > self.claim_ttl.total_seconds() / 3:
            await watermarks.renew(self.held, ttl=self.claim_ttl, now=datetime.now(UTC))
            self._renewed = time.monotonic()

    async def export(self, window: Window, recovered: list[str]) -> ExportResult:
        request, destination, run_id = self.request, self.destination, self.held.run_id
        # Names sort in the order the runs started (to the microsecond).
        stem = f"history-{self.started:%Y%m%dT%H%M%S.%f}Z-{run_id.hex[:12]}"
        data_name = f"{stem}.{EXTENSIONS[request.format]}"
        data_temp = destination.temp_path(run_id, data_name)
        raw, on_close = await self._io(destination.open, data_temp)
        sink = Sink(raw, on_close=on_close)
        writer: Writer | None = None
        try:
            writer = await self._io(open_writer, request.format, sink)
            chunks = iter_chunks(
                window,
                self.series.selection,
                writer.shape,
                scan_rows=self.tuning.scan_rows,
                batch_rows=self.tuning.batch_rows,
                batch_bytes=self.tuning.batch_bytes,
            )
            await self._drain(chunks, writer)
            await self._io(writer.close)
        except BaseException:
            await self._io(writer.abort if writer is not None else sink.close)
            raise
        files: list[ManifestFile] = []
        publishing: list[Publish] = []
        if writer.rows:
            files.append(
                ManifestFile(path=data_name, rows=writer.rows, bytes=sink.size, sha256=sink.sha256)
            )
            publishing.append(Publish(temp=data_temp, final=data_name))
        else:
            await self._io(destination.remove, data_temp)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            run_id=run_id,
            format=request.format,
            destination=destination.url,
            mode="full" if request.full else "incremental",
            selection=self.series.selection,
            watermark=WatermarkRange(after=window.after, through=window.through),
            messages=writer.rows,
            files=files,
            columns=column_docs(),
            started_at=self.started,
            finished_at=datetime.now(UTC),
        )
        manifest_name = f"{stem}.manifest.json"
        manifest_temp = destination.temp_path(run_id, manifest_name)
        await self._io(self._write_manifest, manifest_temp, manifest)
        publishing.append(Publish(temp=manifest_temp, final=manifest_name))
        await watermarks.commit(
            self.held,
            through=window.through,
            messages=writer.rows,
            manifest=manifest_name,
            publishing=publishing,
            now=datetime.now(UTC),
        )
        self.committed = True
        for item in publishing:
            await self._io(destination.publish, item.temp, item.final)
        await watermarks.published(self.held, now=datetime.now(UTC))
        await self._io(destination.remove, destination.run_folder(run_id))
        return ExportResult(manifest=manifest, manifest_path=manifest_name, recovered=recovered)

    async def _drain(self, chunks: AsyncGenerator[Chunk, None], writer: Writer) -> None:
        """Write every chunk, reading the next from the database while one is written."""
        following: asyncio.Task[Chunk] | None = asyncio.ensure_future(anext(chunks))
        try:
            while following is not None:
                try:
                    chunk = await following
                except StopAsyncIteration:
                    following = None
                    break
                # Between reads: one statement at a time on the run's connection.
                await self._keep_claim()
                following = asyncio.ensure_future(anext(chunks))
                await self._io(writer.write, chunk)
                if self.on_rows is not None:
                    self.on_rows(writer.rows)
        finally:
            if following is not None:
                following.cancel()
                with contextlib.suppress(BaseException):
                    await following
            await chunks.aclose()

    def _write_manifest(self, path: str, manifest: Manifest) -> None:
        raw, on_close = self.destination.open(path)
        sink = Sink(raw, on_close=on_close)
        sink.write(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
        sink.close()

    async def abandon(self) -> None:
        """A failed run: remove its temporary files and let the series go, unmoved.

        Once committed, the files are the next run's to publish: nothing is removed.
        """
        if self.committed:
            return
        try:
            await self._io(self.destination.remove, self.destination.run_folder(self.held.run_id))
        finally:
            await watermarks.release(self.held, now=datetime.now(UTC))
