"""``POST /api/v1/{dataset}/preview``: what an upload of this file would find, at once,
with nothing staged.

The answer lines the file's header up with the dataset's columns (names, aliases, case
and spaces as an import matches them), names the mandatory columns missing and the
unknown ones, and gives the first :data:`PREVIEW_ROWS` rows with the problems the row
rules find in them, cell by cell. Nothing is written; the body is parsed in a worker
thread, within the upload limits.

With ``partial=true`` the body is the beginning of a CSV or text file, at most
:data:`PARTIAL_BYTES` (a client sends its first megabyte): the record cut at its end is
left out. Any other body is read whole, and may be at most :data:`WHOLE_BYTES` (a JSON
document's header is every row's keys; a workbook cannot be cut): a larger one is
``413``, and a dry run says what it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
from collections.abc import Mapping
from typing import IO, Annotated, AnyStr, Literal

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
from importq.api.reading import (
    DateFormatOption,
    DecimalOption,
    MappingOption,
    Reading,
    upload_reading,
)
from importq.api.schemas import errors
from importq.ingest.off_loop import off_loop
from importq.ingest.saved_mappings import mapping_for_header
from importq.rules.datasets import Dataset
from importq.rules.row_rules import RowChecker, StagedRow

router = APIRouter()

PREVIEW_ROWS = 20
# The most a partial body may be: a client sends a megabyte.
PARTIAL_BYTES = 4 * 1024 * 1024
# The most a whole body (JSON, XLSX, or a CSV sent whole) may be for a preview.
WHOLE_BYTES = 64 * 1024 * 1024
# Byte order marks, longest first, with the size of their code units.
ByteOrder = Literal["little", "big"]
_BOMS: tuple[tuple[bytes, int, ByteOrder], ...] = (
    (b"\xff\xfe\x00\x00", 4, "little"),
    (b"\x00\x00\xfe\xff", 4, "big"),
    (b"\xff\xfe", 2, "little"),
    (b"\xfe\xff", 2, "big"),
)


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
    #: The header mapping applied: the one asked for, else the newest of your saved
    #: mappings of the dataset made for this header (``mappingName`` names it: send it
    #: as the import's ``mapping``), else None.
    mapping: dict[str, str] | None = None
    mappingName: str | None = None


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
    mapping: MappingOption = None,
    decimal: DecimalOption = None,
    dateFormat: DateFormatOption = None,
    partial: Annotated[
        bool,
        Query(description="The body is only the beginning of a CSV or text file (else ignored)"),
    ] = False,
) -> Preview:
    """What an import of the file would find in its header and first rows, read with
    the options given (or a saved mapping made for its header); nothing is staged."""
    definition = await importable_dataset(services, user, dataset)
    options = file_options(services, encoding, delimiter, sheet)
    reading = await upload_reading(services, user.id, definition, mapping, decimal, dateFormat)
    with contextlib.ExitStack() as closed:
        body = await spool_upload(
            request, services, closed, limit=PARTIAL_BYTES if partial else WHOLE_BYTES
        )
        # Only a text file can be cut at a line end; any other is read whole.
        cut = partial and body.format == "csv"

        async def judged(reading: Reading) -> Preview:
            body.source.seek(0)
            found = await off_loop(
                _preview,
                body.source,
                body.format,
                body.default_delimiter,
                options,
                reading.judging(definition),
                cut,
            )
            return found.model_copy(
                update={"mapping": reading.mapping, "mappingName": reading.mapping_name}
            )

        found = await judged(reading)
        if mapping is None:
            async with services.pool.connection() as conn:
                saved = await mapping_for_header(conn, user.id, definition.name, found.header)
            if saved is not None:
                found = await judged(
                    dataclasses.replace(
                        reading,
                        mapping=definition.known_mapping(saved.mapping),
                        mapping_name=saved.name,
                    )
                )
        return found


def _code_unit(data: bytes, encoding: str | None) -> tuple[int, ByteOrder, bytes]:
    """The size and byte order of the text's code units and its byte order mark: from
    the mark, else from the encoding asked for (UTF-16 and UTF-32 without a mark are
    little-endian)."""
    for bom, size, order in _BOMS:
        if data.startswith(bom):
            return size, order, bom
    name = (encoding or "").lower().replace("_", "-")
    size = 4 if name.startswith("utf-32") else 2 if name.startswith("utf-16") else 1
    return size, "big" if name.endswith("be") else "little", b""


def _whole_records(source: IO[bytes], encoding: str | None) -> IO[bytes]:
    """The beginning of a text file, up to its last line end outside quotes: neither a
    character nor a record (a quoted cell may hold line feeds) is cut. UTF-16 and UTF-32
    are looked at as text; any other allowed encoding keeps a line feed and a quote as
    the bytes 0x0A and 0x22, which no other character's bytes contain."""
    data = source.read()
    size, order, mark = _code_unit(data, encoding)
    if size == 1:
        end = _last_record_end(data, b'"', b"\n")
        return io.BytesIO(data[:end] if end else data)
    codec = f"utf-{size * 8}-{'le' if order == 'little' else 'be'}"
    # A character cut at the end is dropped; the cut below ends before it anyway.
    text = data[len(mark) :].decode(codec, errors="ignore")
    end = _last_record_end(text, '"', "\n")
    return io.BytesIO(mark + text[:end].encode(codec) if end else data)


def _last_record_end(text: AnyStr, quote: AnyStr, line_feed: AnyStr) -> int:
    """Just past the last line feed with an even number of quotes before it, or 0."""
    before = text.count(quote)  # quotes before the end, then before each line feed
    end = len(text)
    while (found := text.rfind(line_feed, 0, end)) >= 0:
        before -= text.count(quote, found, end)
        if before % 2 == 0:
            return found + 1
        end = found
    return 0


def _preview(
    source: IO[bytes],
    fmt: str,
    default_delimiter: str | None,
    options: FileOptions,
    dataset: Dataset,
    partial: bool,
) -> Preview:
    upload = read_file(
        _whole_records(source, options.encoding) if partial else source,
        fmt,
        default_delimiter,
        options,
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
    # Longest names first: a column named like the start of another is not mistaken.
    names = sorted(positions, key=len, reverse=True)
    judged = []
    for row, (_, found) in zip(rows, RowChecker(dataset, positions).judged(rows), strict=True):
        cells = list(row.values)
        if row.problem is not None:
            judged.append(PreviewRow(line=row.line, cells=cells, problems={}, message=row.problem))
            continue
        problems: dict[str, str] = {}
        unplaced: list[str] = []
        for problem in found:
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
