"""The job JSON of the HTTP contract: what ``GET /api/v1/jobs/{id}`` answers and what a
webhook posts.

It is pure pydantic, shared by the API and the worker.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, PlainSerializer

from importq.pipeline.on_error import OnError


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(_utc, return_type=str)]
Status = Literal["pending", "active", "aggregating", "completed", "failed", "cancelled", "undone"]


Mode = Literal["insert", "upsert", "update-only"]


class Progress(BaseModel):
    totalChunks: int
    completedChunks: int
    totalRows: int
    processedRows: int
    successes: int
    duplicates: int
    failures: int
    #: What the successes did to the table; the five add up to ``successes``. An undo's
    #: are deleted (rows the batch undone inserted) and restored (rows it updated).
    inserted: int
    updated: int
    unchanged: int
    deleted: int
    restored: int


class ReportUrls(BaseModel):
    success: str | None
    duplicates: str | None
    failures: str | None


class Summary(BaseModel):
    successes: int
    duplicates: int
    failures: int
    inserted: int
    updated: int
    unchanged: int
    deleted: int
    restored: int

    @classmethod
    def of(cls, row: dict[str, Any]) -> Summary:
        """The counters of a batch row."""
        return cls(**{name: row[name] for name in cls.model_fields})


class Result(BaseModel):
    reportUrls: ReportUrls
    summary: Summary


class Job(BaseModel):
    batchId: uuid.UUID
    #: csv-import, or undo: a batch that takes back what another (undoOf) wrote.
    type: Literal["csv-import", "undo"]
    undoOf: uuid.UUID | None
    #: The undo of this batch, once it is undone.
    undoneBy: uuid.UUID | None
    dataset: str
    #: The version of the dataset's definition that judged the batch.
    datasetVersion: int
    #: A rerun: the batch whose upload it runs again (the one the upload came with).
    rerunOf: uuid.UUID | None
    #: How the upload was read beyond the definition: its header mapping (upload header
    #: -> column), decimal mark and date format; null: the dataset's.
    mapping: dict[str, str] | None
    decimal: Literal["dot", "comma"] | None
    dateFormat: str | None
    #: What a row whose key is stored does: see ``Mode``.
    mode: Mode
    #: What failed rows do: continue, atomic or abort-above=<n>%.
    onError: str
    status: Status
    progress: Progress
    result: Result | None
    createdAt: Timestamp
    updatedAt: Timestamp
    completedAt: Timestamp | None
    format: str
    fileName: str | None
    failedChunks: int
    warnings: list[str]
    lastError: str | None
    reportsExpireAt: Timestamp | None
    #: When the batch was asked to stop; it ends ``cancelled`` (rows never processed
    #: failed with "not imported: the import was cancelled").
    cancelledAt: Timestamp | None
    #: The whole pipeline ran and nothing was written: the outcomes are what an import
    #: would do (successes have no targetId).
    dryRun: bool
    #: When the batch was stopped for its failed rows (``onError``); it ends ``failed``,
    #: with nothing written.
    abortedAt: Timestamp | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            batchId=row["id"],
            type="undo" if row["type"] == "undo" else "csv-import",
            undoOf=row["undo_of"],
            undoneBy=row["undone_by"],
            dataset=row["dataset"],
            datasetVersion=row["dataset_version"],
            rerunOf=row["rerun_of"],
            mapping=row["mapping"],
            decimal=row["decimal_mark"],
            dateFormat=row["date_format"],
            mode=row["mode"],
            onError=OnError(row["on_error"], row["abort_percent"]).text,
            status=row["status"],
            progress=Progress(
                totalChunks=row["total_chunks"],
                completedChunks=row["completed_chunks"] + row["failed_chunks"],
                totalRows=row["total_rows"],
                processedRows=row["processed_rows"],
                **Summary.of(row).model_dump(),
            ),
            # The summary from the counters, which are final once there is a result (and
            # hold what a batch finished before import modes has no words for).
            result=Result(
                reportUrls=ReportUrls.model_validate(row["result"]["reportUrls"]),
                summary=Summary.of(row),
            )
            if row["result"]
            else None,
            createdAt=row["created_at"],
            updatedAt=row["updated_at"],
            completedAt=row["completed_at"],
            format=row["format"],
            fileName=row["file_name"],
            failedChunks=row["failed_chunks"],
            warnings=row["warnings"],
            lastError=row["last_error"],
            reportsExpireAt=row["reports_expire_at"],
            cancelledAt=row["cancelled_at"],
            dryRun=row["dry_run"],
            abortedAt=row["aborted_at"],
        )
