"""The export flow: conversation history to JSONL, CSV or Parquet, in a folder or a bucket.

Thin over ``functions.core.exports``: one task runs one export (``export_history``), which
is incremental by default (the messages finished since the last successful export to the
same destination, format and selection), atomic (files appear whole, under their final
names, with a manifest, or not at all) and flat in memory. Served, it runs daily into
``.switchboard/exports`` under the serving process's directory; set the deployment's
parameters (the Prefect UI's form) to export elsewhere, such as ``s3://bucket/prefix``.

    switchboard flows run export --format parquet --out s3://bucket/history
    switchboard flows run export --out ./exports --since 2026-11-01T00:00:00Z --config default

Bucket credentials and endpoint come from the usual AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible store) or files, never
from the URL: one with credentials, a query or a fragment is refused.
What the run exported is its ``export-report`` artifact and, beside the data, its manifest.
"""

from __future__ import annotations

import uuid  # noqa: TC003 - Prefect reads the flow's annotations at run time
from datetime import datetime, timedelta
from typing import Literal

import msgspec
from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import progress
from flows.runtime import flow_runtime
from functions.core.exports.destinations import check_destination
from functions.core.exports.schemas import ExportRequest, ExportResult, Selection
from functions.core.exports.service import export_history as run_export

NAME = "export"
ARTIFACT_KEY = "export-report"
DEFAULT_DESTINATION = ".switchboard/exports"
# When served: one export a day (a run finding nothing new writes only its manifest).
EVERY = timedelta(days=1)


class ExportReport(msgspec.Struct, kw_only=True):
    """What one run of the export flow wrote."""

    destination: str
    format: str
    mode: str
    messages: int
    # The changes exported (``change_seq``): from ``after`` to below ``through``.
    after: int | None
    through: int
    started_at: datetime
    seconds: float
    manifest: str
    files: list[dict[str, object]]
    recovered: list[str]

    @classmethod
    def of(cls, result: ExportResult) -> ExportReport:
        manifest = result.manifest
        return cls(
            destination=manifest.destination,
            format=manifest.format,
            mode=manifest.mode,
            messages=manifest.messages,
            after=manifest.watermark.after,
            through=manifest.watermark.through,
            started_at=manifest.started_at,
            seconds=(manifest.finished_at - manifest.started_at).total_seconds(),
            manifest=result.manifest_path,
            files=[msgspec.to_builtins(file) for file in manifest.files],
            recovered=result.recovered,
        )

    def summary(self) -> list[str]:
        """The report for a terminal."""
        since = "the beginning" if self.after is None else f"change {self.after}"
        rate = self.messages / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"exported {self.messages} message(s) ({self.mode}, {self.format}) to "
            f"{self.destination} in {self.seconds:.1f} s ({rate:,.0f} rows/s)",
            f"  every message finished by {self.started_at:%Y-%m-%d %H:%M:%S} UTC "
            f"(changes from {since} to below {self.through})",
        ]
        lines += [f"  {f['path']}: {f['rows']} rows, {f['bytes']} bytes" for f in self.files]
        lines.append(f"  manifest: {self.manifest}")
        if self.recovered:
            lines.append(f"  published {len(self.recovered)} file(s) an earlier run left")
        return lines

    def markdown(self) -> str:
        lines = [
            f"# Export to `{self.destination}`",
            "",
            f"- **{self.messages}** message(s), {self.mode}, {self.format}",
            f"- every message finished by `{self.started_at}` (changes from "
            f"`{self.after}` to below `{self.through}`)",
            f"- manifest `{self.manifest}`",
        ]
        if self.files:
            lines += ["", "| file | rows | bytes | sha256 |", "| --- | --- | --- | --- |"]
            lines += [
                f"| {f['path']} | {f['rows']} | {f['bytes']} | `{f['sha256']}` |"
                for f in self.files
            ]
        return "\n".join(lines)


@task(
    name="export-history",
    description="Export the finished messages the watermark has not passed yet.",
    # A failed run leaves nothing and does not move the watermark: running again is safe.
    retries=1,
    retry_delay_seconds=60,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def export_task(request: ExportRequest) -> ExportResult:
    counter = progress.rows_counter(f"exporting to {request.destination}")
    return await run_export(request, on_rows=counter)


@flow(
    name=NAME,
    description="Export conversation history (JSONL, CSV or Parquet) to a folder or a "
    "bucket: what finished since the last export, atomically, with a manifest.",
    retries=0,
    persist_result=False,
    log_prints=False,
)
async def export_history(
    *,
    out: str = DEFAULT_DESTINATION,
    format: Literal["jsonl", "csv", "parquet"] = "jsonl",
    full: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    owner: uuid.UUID | None = None,
    config: str | None = None,
) -> ExportReport:
    """Export the history finished since the last export to ``out`` (or all of it).

    Args:
        out: A folder, or a bucket URL such as s3://bucket/prefix.
        format: jsonl (default), csv or parquet.
        full: Export every finished message again, not only the new ones.
        since: Only messages stored at or after this time (RFC 3339; UTC if no zone).
        until: Only messages stored before this time (RFC 3339; UTC if no zone).
        owner: Only the conversations of this API key (its id).
        config: Only the conversations using this configuration (its name).
    """

    def prepare(_: object) -> ExportRequest:
        # Before anything is opened: a URL carrying a secret is refused, never retried,
        # stored or logged (a failed run, so a deployment given one alerts).
        check_destination(out)
        return ExportRequest(
            destination=out,
            format=format,
            full=full,
            selection=Selection(owner=owner, config=config, since=since, until=until),
        )

    async with flow_runtime(NAME, steps=1, use_llm=False, prepare=prepare) as rt:
        progress.step(f"exporting to {out}")
        result = await export_task(rt.prepared)
        report = ExportReport.of(result)
        rt.run.add("messages", report.messages)
        await acreate_markdown_artifact(
            key=ARTIFACT_KEY, markdown=report.markdown(), description="What the export wrote."
        )
        rt.log.info(
            "export.done",
            destination=report.destination,
            format=report.format,
            messages=report.messages,
            manifest=report.manifest,
        )
    return report
