"""``POST /api/v1/{dataset}/preview``: what an upload of this file would find, at once,
with nothing staged.

The answer lines the file's header up with the dataset's columns (names, aliases, case
and spaces as an import matches them), names the mandatory columns missing and the
unknown ones, and gives the first :data:`PREVIEW_ROWS` rows with the problems the row
rules find in them, cell by cell. Nothing is written; the body is read in a worker
thread, within the upload limits, and only as far as those rows.

With ``partial=true`` the body is the beginning of a CSV or text file (a client sends
its first megabyte): the record cut at its end is left out. JSON and XLSX bodies are
always read whole (a JSON document or a workbook cannot be cut).
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Mapping
from typing import IO, Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from importq.api.auth import CurrentUser, ServicesDep
from importq.api.imports import (
    DelimiterOption,
    EncodingOption,
    FileOptions,
    SheetOption,
    file_options,
    importable_dataset,
    read_file,
    spool_upload,
)
from importq.api.schemas import errors
from importq.ingest.off_loop import off_loop
from importq.rules.datasets import Dataset
from importq.rules.row_rules import RowChecker, StagedRow

router = APIRouter()

PREVIEW_ROWS = 20
# The most of a partial body that is read: a client sends a megabyte.
PARTIAL_BYTES = 4 * 1024 * 1024
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class PreviewRow(BaseModel):
    line: int
    cells: list[str | None]
    #: What the row rules refuse, by the index of the cell (as text) they refuse.
    problems: dict[str, str]
    #: What is wrong with the row as a whole (a ragged row, a mandatory column absent
    #: from the file), or None.
    message: str | None


class Preview(BaseModel):
    header: list[str]
    #: For each uploaded column, the dataset column it fills, or None (ignored).
    columns: list[str | None]
    missing: list[str]
    unknown: list[str]
    duplicated: list[str]
    rows: list[PreviewRow]


@router.post(
    "/api/v1/{dataset}/preview",
    response_model=Preview,
    responses=errors(400, 403, 404, 413, 415, 503),
)
async def preview(
    dataset: str,
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    encoding: EncodingOption = None,
    delimiter: DelimiterOption = None,
    sheet: SheetOption = None,
    partial: Annotated[
        bool,
        Query(description="The body is only the beginning of a CSV or text file (else ignored)"),
    ] = False,
) -> Preview:
    """What an import of the file would find in its header and first rows; nothing is
    staged."""
    definition = importable_dataset(services, user, dataset)
    options = file_options(services, encoding, delimiter, sheet)
    with contextlib.ExitStack() as closed:
        body = await spool_upload(request, services, closed)
        # Only a text file can be cut at a line end; any other is read whole.
        cut = partial and body.format == "csv"
        return await off_loop(
            _preview, body.source, body.format, body.default_delimiter, options, definition, cut
        )


def _whole_records(source: IO[bytes]) -> IO[bytes]:
    """The beginning of a text file, up to its last line end (UTF-16 kept aligned)."""
    data = source.read(PARTIAL_BYTES)
    step = 2 if data.startswith(_UTF16_BOMS) else 1
    end = len(data) - (len(data) % step)
    while end > 0:
        if b"\n" in data[end - step : end]:
            break
        end -= step
    return io.BytesIO(data[:end] if end > 0 else data)


def _preview(
    source: IO[bytes],
    fmt: str,
    default_delimiter: str | None,
    options: FileOptions,
    dataset: Dataset,
    partial: bool,
) -> Preview:
    upload = read_file(
        _whole_records(source) if partial else source, fmt, default_delimiter, options
    )
    match = dataset.match_header(upload.header)
    rows = list(itertools.islice(upload.rows, PREVIEW_ROWS))
    column_at = {position: name for name, position in match.positions.items()}
    return Preview(
        header=upload.header,
        columns=[column_at.get(i) for i in range(len(upload.header))],
        missing=list(match.missing),
        unknown=list(match.unknown),
        duplicated=list(match.duplicated),
        rows=_judged(dataset, match.positions, rows),
    )


def _judged(
    dataset: Dataset, positions: Mapping[str, int], rows: list[StagedRow]
) -> list[PreviewRow]:
    """Each row with its problems put on the cells they are about. A problem reads
    ``<column>: <what>``; one about a column the file lacks stays with the row."""
    checker = RowChecker(dataset, positions)
    readable = [row for row in rows if row.problem is None]
    checked = iter(checker.check([row.values for row in readable]))
    # Longest names first: a column named like the start of another is not mistaken.
    names = sorted(positions, key=len, reverse=True)
    judged = []
    for row in rows:
        cells = list(row.values)
        if row.problem is not None:
            judged.append(PreviewRow(line=row.line, cells=cells, problems={}, message=row.problem))
            continue
        problems: dict[str, str] = {}
        unplaced: list[str] = []
        for problem in next(checked)[1]:
            name = next((n for n in names if problem.startswith(f"{n}: ")), None)
            if name is None:
                unplaced.append(problem)
                continue
            key = str(positions[name])
            problems[key] = f"{problems[key]}; {problem}" if key in problems else problem
        judged.append(
            PreviewRow(
                line=row.line,
                cells=cells,
                problems=problems,
                message="; ".join(unplaced) or None,
            )
        )
    return judged
