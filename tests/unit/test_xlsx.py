"""read_xlsx over real files: workbooks written by openpyxl, and hand-made zips for what
openpyxl cannot write (cached formula values, float noise, entity bombs, zip bombs).

Where calamine, the reader, might read a file otherwise than openpyxl, the reader these
files were written with, a test also reads the file with openpyxl and compares."""

from __future__ import annotations

import codecs
import datetime as dt
import io
import zipfile
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import openpyxl  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openpyxl.styles import Font  # type: ignore[import-untyped]
from openpyxl.utils.datetime import CALENDAR_MAC_1904  # type: ignore[import-untyped]

from importq.errors import Refusal
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload
from importq.ingest.xlsx_reader import (
    PROLOG_BYTES,
    ArchiveLimits,
    cell_text,
    number_text,
    read_xlsx,
)
from importq.rules.row_rules import StagedRow

# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workbook_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sheets: Entrances (the first), Numbers (header on row 3), Empty."""
    workbook = openpyxl.Workbook()
    entrances = workbook.active
    assert entrances is not None
    entrances.title = "Entrances"
    entrances.append(["id", "name", "visited", "seen_at", "opens", "depth", "open"])
    entrances.append(
        [1, "Gouffre Berger", dt.date(2024, 1, 15), dt.datetime(2024, 1, 15, 12, 30, 5)]
    )
    entrances["E2"] = dt.time(8, 15)
    entrances["F2"] = 12.5
    entrances["G2"] = True
    entrances.append([2, "Grotte", dt.date(1999, 12, 31), dt.datetime(2024, 2, 1, 0, 0)])
    entrances["F3"] = 0.1 + 0.2  # computed in Python: 0.30000000000000004
    entrances["G3"] = False
    # Row 4 is blank; row 5 starts a "merged-looking" block: values only in its first row.
    entrances.append([])
    entrances.append([3, "Aven", None, None, None, 10000000.0])
    entrances.merge_cells("B5:B6")
    entrances.append([4, None, None, None, None, 12345678901234])
    entrances.append([5, "Ragged", None, None, None, None, None, None, "beyond"])
    # Trailing empty rows and columns that exist in the XML (styled, no value).
    for row in range(8, 12):
        for column in range(1, 12):
            entrances.cell(row=row, column=column).font = Font(bold=True)
    for row in range(1, 8):
        entrances.cell(row=row, column=11).font = Font(italic=True)

    numbers = workbook.create_sheet("Numbers")
    numbers.append([])
    numbers.append([])
    numbers.append(["label", "value"])
    numbers.append(["ten million", 10000000])
    numbers.append(["big", 12345678901234])
    numbers.append([])
    numbers.append(["larger", 2**53 - 1])
    numbers.append(["third", 1 / 3])
    numbers.append(["tiny", 1e-7])
    numbers.append(["float 1e7", 1e7])
    numbers.append(["negative", -2.5])

    workbook.create_sheet("Empty")
    path = tmp_path_factory.mktemp("xlsx") / "book.xlsx"
    workbook.save(path)
    return path


_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" '
    'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" ContentType='
    '"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" ContentType='
    '"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    '<Override PartName="/xl/styles.xml" ContentType='
    '"application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
    "</Types>"
)
_ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="xl/workbook.xml" Type='
    '"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>'
    "</Relationships>"
)
_WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Data" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
_WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="worksheets/sheet1.xml" Type='
    '"http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet"/>'
    '<Relationship Id="rId2" Target="styles.xml" Type='
    '"http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles"/>'
    "</Relationships>"
)
# Style 1 is a date (built-in format 14), style 2 a date and time (format 22).
_STYLES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
    '<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="1"><fill><patternFill patternType="none"/></fill></fills>'
    '<borders count="1"><border/></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="3"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="14" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="22" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    "</cellXfs>"
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)
_BILLION_LAUGHS = (
    '<?xml version="1.0"?>'
    '<!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    '<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">'
    '<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">'
    '<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">'
    '<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">'
    '<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">'
    '<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">'
    "]>"
)


def _sheet(rows: str, *, dimension: str = "", prolog: str = "") -> str:
    return (
        (prolog or '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>')
        + '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        + (f'<dimension ref="{dimension}"/>' if dimension else "")
        + f"<sheetData>{rows}</sheetData></worksheet>"
    )


def _text(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


_SHARED_STRINGS_TYPE = (
    '<Override PartName="/xl/sharedStrings.xml" ContentType='
    '"application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
)
_SHARED_STRINGS_RELATIONSHIP = (
    '<Relationship Id="rId3" Target="sharedStrings.xml" Type='
    '"http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"/>'
)


def _hand_made(
    path: Path,
    sheet_xml: str,
    *,
    workbook_xml: str = _WORKBOOK,
    content_types: bool = True,
    shared_strings: str | bytes | None = None,
    members: Mapping[str, str | bytes] | None = None,
) -> Path:
    """A minimal XLSX written member by member (no cached-value limits of openpyxl)."""
    types, relationships = _CONTENT_TYPES, _WORKBOOK_RELS
    if shared_strings is not None:
        types = types.replace("</Types>", _SHARED_STRINGS_TYPE + "</Types>")
        relationships = relationships.replace(
            "</Relationships>", _SHARED_STRINGS_RELATIONSHIP + "</Relationships>"
        )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if content_types:
            archive.writestr("[Content_Types].xml", types)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", workbook_xml)
        archive.writestr("xl/_rels/workbook.xml.rels", relationships)
        archive.writestr("xl/styles.xml", _STYLES)
        archive.writestr("xl/worksheets/sheet1.xml", sheet_xml)
        if shared_strings is not None:
            archive.writestr("xl/sharedStrings.xml", shared_strings)
        for name, data in (members or {}).items():
            archive.writestr(name, data)
    return path


_HEADER = "<row r='1'>" + _text("A1", "a") + _text("B1", "b") + "</row>"


@pytest.fixture
def read() -> Iterator[Any]:
    """read_xlsx over a path, closing the file at teardown."""
    opened: list[IO[bytes]] = []

    def run(path: Path, **options: Any) -> ParsedUpload:
        binary = path.open("rb")
        opened.append(binary)
        return read_xlsx(binary, **options)

    yield run
    for binary in opened:
        binary.close()


def _refusal(run: Any, path: Path, **options: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        list(run(path, **options).rows)
    return caught.value


Reading = tuple[list[str], list[tuple[int, list[str | None]]]]


def _reading(upload: ParsedUpload) -> Reading:
    """The header, and the rows as (line, values) without the padding to the header."""
    rows = []
    for row in upload.rows:
        values = list(row.values)
        while values and values[-1] is None:
            values.pop()
        rows.append((row.line, values))
    return upload.header, rows


def _as_openpyxl_reads(path: Path) -> Reading:
    """The first sheet as openpyxl reads it, shaped as :func:`_reading`: the oracle for
    what calamine reads."""
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sheet = workbook.worksheets[0]
        sheet.reset_dimensions()
        found = []
        for number, cells in enumerate(sheet.iter_rows(), start=1):
            texts = [cell_text(cell.value, getattr(cell, "number_format", None)) for cell in cells]
            texts = [text or None for text in texts]
            while texts and texts[-1] is None:
                texts.pop()
            if texts:
                found.append((number, texts))
    finally:
        workbook.close()
    return [text or "" for text in found[0][1]], found[1:]


# --- the openpyxl workbook --------------------------------------------------------------


def test_first_sheet_by_default_with_iso_dates_and_plain_numbers(
    read: Any, workbook_path: Path
) -> None:
    upload = read(workbook_path)
    assert upload.header == ["id", "name", "visited", "seen_at", "opens", "depth", "open"]
    rows = list(upload.rows)
    assert rows == [
        StagedRow(
            2,
            [
                "1",
                "Gouffre Berger",
                "2024-01-15",
                "2024-01-15T12:30:05",
                "08:15:00",
                "12.5",
                "true",
            ],
        ),
        StagedRow(3, ["2", "Grotte", "1999-12-31", "2024-02-01T00:00:00", None, "0.3", "false"]),
        # row 4 is blank: skipped, its number kept
        StagedRow(5, ["3", "Aven", None, None, None, "10000000", None]),
        StagedRow(6, ["4", None, None, None, None, "12345678901234", None]),
        StagedRow(
            7,
            ["5", "Ragged", None, None, None, None, None, None, "beyond"],
            "expected 7 fields, found 9",
        ),
    ]
    # styled empty cells in rows 8-11 and column K are ignored


def test_sheet_by_name_with_header_after_blank_rows(read: Any, workbook_path: Path) -> None:
    upload = read(workbook_path, sheet="Numbers")
    assert upload.header == ["label", "value"]
    assert [(row.line, list(row.values)) for row in upload.rows] == [
        (4, ["ten million", "10000000"]),
        (5, ["big", "12345678901234"]),
        (7, ["larger", "9007199254740991"]),
        (8, ["third", "0.333333333333333"]),
        (9, ["tiny", "0.0000001"]),
        (10, ["float 1e7", "10000000"]),
        (11, ["negative", "-2.5"]),
    ]


def test_sheet_name_matches_ignoring_case_like_excel(read: Any, workbook_path: Path) -> None:
    assert read(workbook_path, sheet="numbers").header == ["label", "value"]


def test_unknown_sheet_lists_the_sheets(read: Any, workbook_path: Path) -> None:
    refusal = _refusal(read, workbook_path, sheet="Caves")
    assert (refusal.status, refusal.code) == (400, "unknown_sheet")
    assert refusal.extra["sheets"] == ["Entrances", "Numbers", "Empty"]
    assert "Caves" in refusal.detail


def test_empty_sheet_is_empty_data(read: Any, workbook_path: Path) -> None:
    refusal = _refusal(read, workbook_path, sheet="Empty")
    assert (refusal.status, refusal.code) == (400, "empty_data")


def test_hidden_first_sheet_is_passed_over(read: Any, tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    hidden = workbook.active
    assert hidden is not None
    hidden.title = "Lists"
    hidden.append(["lookup"])
    hidden.sheet_state = "hidden"
    workbook.create_sheet("Data").append(["id"])
    path = tmp_path / "hidden.xlsx"
    workbook.save(path)
    assert read(path).header == ["id"]
    assert read(path, sheet="Lists").header == ["lookup"]


def test_cell_longer_than_the_limit_is_413_with_its_line(read: Any, workbook_path: Path) -> None:
    refusal = _refusal(read, workbook_path, limits=UploadLimits(max_cell_chars=10))
    assert (refusal.status, refusal.code) == (413, "cell_too_long")
    assert refusal.extra == {"limit": 10, "line": 2}  # "Gouffre Berger" is 14 characters
    # the header is checked too, as it is read ("visited" is 7 characters)
    with pytest.raises(Refusal) as caught:
        read(workbook_path, limits=UploadLimits(max_cell_chars=6))
    assert caught.value.extra == {"limit": 6, "line": 1}


def test_total_uncompressed_size_limit(read: Any, workbook_path: Path) -> None:
    refusal = _refusal(
        read, workbook_path, archive_limits=ArchiveLimits(max_uncompressed_bytes=1000)
    )
    assert (refusal.status, refusal.code) == (413, "xlsx_too_large")
    assert refusal.extra == {"limit": 1000}
    assert "1000 bytes" in refusal.detail


# --- hand-made workbooks ----------------------------------------------------------------


def test_formula_gives_its_cached_value(read: Any, tmp_path: Path) -> None:
    rows = (
        _HEADER
        + '<row r="2"><c r="A2"><v>42</v></c><c r="B2"><f>A2*2</f><v>84</v></c></row>'
        + '<row r="3"><c r="A3" t="inlineStr"><is><t>x</t></is></c>'
        + '<c r="B3" t="str"><f>UPPER(A3)</f><v>X</v></c></row>'
        + '<row r="4"><c r="A4"><v>1</v></c><c r="B4"><f>A4/0</f></c></row>'
    )
    upload = read(_hand_made(tmp_path / "formula.xlsx", _sheet(rows)))
    assert upload.header == ["a", "b"]
    assert [list(row.values) for row in upload.rows] == [["42", "84"], ["x", "X"], ["1", None]]


def test_float_noise_exponents_and_dates_in_the_xml(read: Any, tmp_path: Path) -> None:
    rows = (
        _HEADER
        + '<row r="2"><c r="A2"><v>0.30000000000000004</v></c><c r="B2"><v>1.0E7</v></c></row>'
        + '<row r="3"><c r="A3" s="1"><v>45306</v></c><c r="B3" s="2"><v>45306</v></c></row>'
        + '<row r="4"><c r="A4" s="2"><v>45306.5</v></c><c r="B4" t="d"><v>2024-03-01</v></c></row>'
        + '<row r="5"><c r="A5" t="b"><v>1</v></c><c r="B5" t="e"><v>#DIV/0!</v></c></row>'
        + '<row r="6"><c r="A6"><v>123456789012345678</v></c><c r="B6"><v>-1E-3</v></c></row>'
    )
    upload = read(_hand_made(tmp_path / "numbers.xlsx", _sheet(rows)))
    assert [list(row.values) for row in upload.rows] == [
        ["0.3", "10000000"],
        ["2024-01-15", "2024-01-15T00:00:00"],
        ["2024-01-15T12:00:00", "2024-03-01"],
        ["true", "#DIV/0!"],
        ["123456789012345678", "-0.001"],  # an integer in the XML is kept exactly
    ]


def test_lines_are_sheet_row_numbers(read: Any, tmp_path: Path) -> None:
    rows = (
        '<row r="3">' + _text("A3", "a") + _text("B3", "b") + "</row>"
        '<row r="4">' + _text("A4", "1") + "</row>"
        '<row r="5"><c r="A5" t="inlineStr"><is><t></t></is></c><c r="B5"/></row>'
        '<row r="7">' + _text("B7", "2") + "</row>"
        # a row without its number follows the previous one
        "<row>" + '<c t="inlineStr"><is><t>3</t></is></c>' + "</row>"
    )
    upload = read(_hand_made(tmp_path / "lines.xlsx", _sheet(rows)))
    assert upload.header == ["a", "b"]
    assert list(upload.rows) == [
        StagedRow(4, ["1", None]),
        StagedRow(7, [None, "2"]),
        StagedRow(8, ["3", None]),
    ]


def test_a_row_with_values_past_the_column_limit_is_413_with_its_line(
    read: Any, tmp_path: Path
) -> None:
    rows = (
        _HEADER
        + "<row r='2'>"
        + _text("A2", "1")
        + _text("C2", "wide but within")
        + "</row><row r='3'>"
        + _text("A3", "1")
        + _text("D3", "too wide")
        + "</row>"
    )
    path = _hand_made(tmp_path / "wide.xlsx", _sheet(rows))
    refusal = _refusal(read, path, limits=UploadLimits(max_columns=3))
    assert (refusal.status, refusal.code, refusal.extra) == (
        413,
        "too_many_columns",
        {"limit": 3, "line": 3},
    )


def test_a_wrong_declared_dimension_loses_no_rows(read: Any, tmp_path: Path) -> None:
    rows = _HEADER + "".join(
        f'<row r="{n}">' + _text(f"A{n}", str(n)) + _text(f"C{n}", "wide") + "</row>"
        for n in range(2, 6)
    )
    upload = read(_hand_made(tmp_path / "dimension.xlsx", _sheet(rows, dimension="A1:B2")))
    lines = [(row.line, row.problem) for row in upload.rows]
    assert lines == [(n, "expected 2 fields, found 3") for n in range(2, 6)]


def test_row_beyond_excels_last_row_is_refused(read: Any, tmp_path: Path) -> None:
    rows = _HEADER + '<row r="1048577">' + _text("A1048577", "x") + "</row>"
    refusal = _refusal(read, _hand_made(tmp_path / "far.xlsx", _sheet(rows)))
    assert (refusal.status, refusal.code) == (400, "bad_xlsx")
    assert "1048576" in refusal.detail


def test_entity_bomb_in_a_sheet_is_refused(read: Any, tmp_path: Path) -> None:
    sheet = _sheet(
        _HEADER + '<row r="2">' + _text("A2", "&lol9;") + "</row>", prolog=_BILLION_LAUGHS
    )
    refusal = _refusal(read, _hand_made(tmp_path / "laughs.xlsx", sheet))
    assert (refusal.status, refusal.code) == (400, "bad_xlsx")
    assert "entities" in refusal.detail


def test_external_entity_in_the_workbook_part_is_refused(read: Any, tmp_path: Path) -> None:
    workbook = _WORKBOOK.replace(
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
        '<?xml version="1.0"?><!DOCTYPE workbook [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    ).replace('name="Data"', 'name="&x;"')
    path = _hand_made(tmp_path / "xxe.xlsx", _sheet(_HEADER), workbook_xml=workbook)
    refusal = _refusal(read, path)
    assert (refusal.status, refusal.code) == (400, "bad_xlsx")
    assert "entities" in refusal.detail


def test_a_broken_row_is_refused_while_streaming(read: Any, tmp_path: Path) -> None:
    rows = (
        _HEADER
        + '<row r="2"><c r="A2"><v>1</v></c></row>'
        + '<row r="3"><c r="A3" t="n"><v>1.2.3</v></c></row>'
    )
    upload = read(_hand_made(tmp_path / "broken.xlsx", _sheet(rows)))
    assert upload.header == ["a", "b"]
    with pytest.raises(Refusal) as caught:
        list(upload.rows)
    assert (caught.value.status, caught.value.code) == (400, "bad_xlsx")
    # calamine parses a row ahead of the one it yields: row 2 was never delivered
    assert "cannot be read after row 1 (" in caught.value.detail
    assert "/" not in caught.value.detail  # no server path in the message


def test_text_in_a_number_cell_is_read_as_text(read: Any, tmp_path: Path) -> None:
    # openpyxl refused the whole file; calamine keeps what the cell holds.
    rows = _HEADER + '<row r="2"><c r="A2"><v>x</v></c></row>'
    assert list(read(_hand_made(tmp_path / "text.xlsx", _sheet(rows))).rows) == [
        StagedRow(2, ["x", None])
    ]


def test_rows_out_of_order_are_refused(read: Any, tmp_path: Path) -> None:
    rows = _HEADER + '<row r="5">' + _text("A5", "5") + '</row><row r="3">' + _text("A3", "3")
    refusal = _refusal(read, _hand_made(tmp_path / "order.xlsx", _sheet(rows + "</row>")))
    assert (refusal.status, refusal.code) == (400, "bad_xlsx")
    assert "not stored in order" in refusal.detail


# --- where calamine could read otherwise than openpyxl ----------------------------------


def test_dates_of_a_1904_workbook(read: Any, tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    workbook.epoch = CALENDAR_MAC_1904
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["date", "timestamp", "midnight", "time"])
    sheet.append(
        [
            dt.date(2024, 1, 15),
            dt.datetime(2024, 1, 15, 6, 30),
            dt.datetime(2024, 1, 15),
            dt.time(6, 30),
        ]
    )
    sheet.append([dt.date(1904, 1, 2)])
    path = tmp_path / "mac.xlsx"
    workbook.save(path)
    reading = _reading(read(path))
    assert reading[1] == [
        (2, ["2024-01-15", "2024-01-15T06:30:00", "2024-01-15T00:00:00", "06:30:00"]),
        (3, ["1904-01-02"]),
    ]
    assert reading == _as_openpyxl_reads(path)


def test_empty_and_missing_rows_before_the_header(read: Any, tmp_path: Path) -> None:
    rows = (
        # rows 1 and 2 are stored but empty: an empty text, a styled cell, a formula whose
        # cached value is empty text; row 3 is missing
        '<row r="1"><c r="A1" t="inlineStr"><is><t></t></is></c></row>'
        '<row r="2"><c r="B2" s="1"/><c r="C2" t="str"><f>""</f><v></v></c></row>'
        '<row r="4">' + _text("A4", "a") + _text("B4", "b") + "</row>"
        '<row r="5">' + _text("A5", "1") + '<c r="B5" t="inlineStr"><is><t></t></is></c></row>'
        '<row r="6"><c r="A6" s="1"/></row>'
        '<row r="8">' + _text("B8", "2") + "</row>"
    )
    path = _hand_made(tmp_path / "gaps.xlsx", _sheet(rows))
    reading = _reading(read(path))
    assert reading == (["a", "b"], [(5, ["1"]), (8, [None, "2"])])
    assert reading == _as_openpyxl_reads(path)


def test_error_cells_read_as_their_code(read: Any, tmp_path: Path) -> None:
    codes = ["#DIV/0!", "#N/A", "#REF!", "#NAME?", "#VALUE!", "#NUM!", "#NULL!"]
    rows = "".join(
        f'<row r="{n}"><c r="A{n}" t="e"><f>X()</f><v>{code}</v></c>'
        f'<c r="B{n}" t="e"><v>{code}</v></c></row>'
        for n, code in enumerate(codes, start=2)
    )
    path = _hand_made(tmp_path / "errors.xlsx", _sheet(_HEADER + rows))
    reading = _reading(read(path))
    assert reading[1] == [(n, [code, code]) for n, code in enumerate(codes, start=2)]
    assert reading == _as_openpyxl_reads(path)


def test_an_error_code_calamine_does_not_know_refuses_the_sheet(read: Any, tmp_path: Path) -> None:
    # Excel 365's newer codes (#SPILL!, #CALC!, #FIELD!...): openpyxl read them as text,
    # calamine 0.36 refuses the cell, so the upload is refused at its row.
    rows = _HEADER + '<row r="2"><c r="A2" t="e"><f>SEQUENCE(9)</f><v>#SPILL!</v></c></row>'
    refusal = _refusal(read, _hand_made(tmp_path / "spill.xlsx", _sheet(rows)))
    assert (refusal.status, refusal.code) == (400, "bad_xlsx")
    assert "#SPILL!" in refusal.detail


def test_shared_strings_with_rich_text_runs(read: Any, tmp_path: Path) -> None:
    shared_strings = (
        '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        "<si><t>name</t></si><si><t>reading</t></si>"
        '<si><r><rPr><b/></rPr><t>Gouffre</t></r><r><rPr><i/></rPr><t xml:space="preserve">'
        " Berger</t></r></si>"
        # a phonetic guide (furigana) is not part of the text
        '<si><t>洞窟</t><rPh sb="0" eb="2"><t>ドウクツ</t></rPh><phoneticPr fontId="0"/></si>'
        '<si><r><t>a&amp;b</t></r><r><t xml:space="preserve">  </t></r></si>'
        "</sst>"
    )
    rows = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2"><c r="A2" t="s"><v>2</v></c><c r="B2" t="s"><v>3</v></c></row>'
        '<row r="3"><c r="A3" t="s"><v>4</v></c></row>'
    )
    path = _hand_made(tmp_path / "rich.xlsx", _sheet(rows), shared_strings=shared_strings)
    reading = _reading(read(path))
    assert reading == (
        ["name", "reading"],
        [(2, ["Gouffre Berger", "洞窟"]), (3, ["a&b  "])],
    )
    assert reading == _as_openpyxl_reads(path)


def test_an_integer_of_more_than_18_digits_reads_as_excel_shows_it(
    read: Any, tmp_path: Path
) -> None:
    # calamine reads it as a float; openpyxl kept all its digits. Excel cannot write one.
    rows = _HEADER + '<row r="2"><c r="A2"><v>1234567890123456789</v></c></row>'
    upload = read(_hand_made(tmp_path / "huge.xlsx", _sheet(rows)))
    assert list(upload.rows) == [StagedRow(2, ["1234567890123460000", None])]


def test_chartsheets_are_neither_chosen_nor_listed(read: Any, tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    data = workbook.active
    assert data is not None
    data.title = "Data"
    data.append(["id"])
    data.append([1])
    chart = openpyxl.chart.BarChart()
    chart.add_data(openpyxl.chart.Reference(data, min_col=1, min_row=1, max_row=2))
    workbook.create_chartsheet("Chart", 0).add_chart(chart)
    path = tmp_path / "chart.xlsx"
    workbook.save(path)
    assert _reading(read(path)) == (["id"], [(2, ["1"])])
    refusal = _refusal(read, path, sheet="Chart")
    assert (refusal.status, refusal.code) == (400, "unknown_sheet")
    assert refusal.extra["sheets"] == ["Data"]


# --- not an XLSX, zip bombs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"id,name\n1,x\n", "not a zip"),
        (b"", "not a zip"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "legacy .xls"),
        (b"PK\x03\x04 truncated", "not a zip"),
    ],
)
def test_not_an_xlsx_is_400(body: bytes, words: str) -> None:
    with pytest.raises(Refusal) as caught:
        read_xlsx(io.BytesIO(body))
    assert (caught.value.status, caught.value.code) == (400, "bad_xlsx")
    assert words in caught.value.detail


def test_a_zip_that_is_not_a_workbook_is_400(read: Any, tmp_path: Path) -> None:
    refusal = _refusal(
        read, _hand_made(tmp_path / "plain.zip", _sheet(_HEADER), content_types=False)
    )
    assert (refusal.status, refusal.code) == (400, "bad_xlsx")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
    refusal = _refusal(read, other)
    assert (refusal.status, refusal.code) == (400, "bad_xlsx")


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid-looking XLSX whose sheet is 100 MiB of spaces in 100 KiB of deflate."""
    path = _hand_made(tmp_path_factory.mktemp("bomb") / "bomb.xlsx", _sheet(_HEADER))
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        block = b" " * (1 << 20)
        with archive.open("xl/worksheets/sheet2.xml", "w", force_zip64=True) as member:
            for _ in range(100):
                member.write(block)
    return path


def test_zip_bomb_is_refused_from_the_directory(read: Any, zip_bomb: Path) -> None:
    refusal = _refusal(read, zip_bomb)
    assert (refusal.status, refusal.code) == (413, "xlsx_too_large")
    assert refusal.extra == {"limit": 200}
    assert "sheet2.xml" in refusal.detail and "200 to 1" in refusal.detail


def test_a_higher_ratio_limit_lets_the_bomb_through_to_the_size_limit(
    read: Any, zip_bomb: Path
) -> None:
    refusal = _refusal(
        read,
        zip_bomb,
        archive_limits=ArchiveLimits(max_ratio=10_000, max_uncompressed_bytes=50 * 1024**2),
    )
    assert (refusal.status, refusal.code) == (413, "xlsx_too_large")
    assert refusal.extra == {"limit": 50 * 1024**2}


def test_an_unseekable_stream_is_a_programming_error() -> None:
    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError, match="seekable"):
        read_xlsx(Pipe(b"PK"))


# --- document type declarations, wherever they hide ------------------------------------

_ENTITIES = (
    "The workbook contains an XML document type declaration with entities, which is "
    "refused (XLSX files never need one)."
)
_STRINGS = (
    '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" '
    'uniqueCount="1"><si><t>a</t></si></sst>'
)
_DOCTYPE = '<!DOCTYPE sst [<!ENTITY x "x">]>'
_SHARED_HEADER = '<row r="1"><c r="A1" t="s"><v>0</v></c></row>'


@pytest.mark.parametrize(
    "shared_strings",
    [
        '<?xml version="1.0"?><!-- written by hand -->' + _DOCTYPE + _STRINGS,
        '<?xml version="1.0"?>\n<?custom data?>\n'
        + _DOCTYPE.replace("DOCTYPE", "doctype")
        + _STRINGS,
        '<?xml version="1.0"?>stray text ' + _DOCTYPE + _STRINGS,
        codecs.BOM_UTF8 + ('<?xml version="1.0"?>' + _DOCTYPE + _STRINGS).encode(),
        ('\ufeff<?xml version="1.0" encoding="UTF-16"?>' + _DOCTYPE + _STRINGS).encode("utf-16-le"),
        ('<?xml version="1.0" encoding="UTF-16"?>' + _DOCTYPE + _STRINGS).encode("utf-16-be"),
    ],
    ids=[
        "after-a-comment",
        "lowercase-after-an-instruction",
        "after-text",
        "utf-8-bom",
        "utf-16-bom",
        "utf-16-no-bom",
    ],
)
def test_a_document_type_in_the_shared_strings_prolog_is_refused(
    read: Any, tmp_path: Path, shared_strings: str | bytes
) -> None:
    path = _hand_made(tmp_path / "dtd.xlsx", _sheet(_SHARED_HEADER), shared_strings=shared_strings)
    refusal = _refusal(read, path)
    assert (refusal.status, refusal.code, refusal.detail) == (400, "bad_xlsx", _ENTITIES)


def test_a_document_type_is_refused_in_any_member_whatever_its_name(
    read: Any, tmp_path: Path
) -> None:
    # Relationships, not names, tell calamine which parts to parse.
    xxe = '<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd"><r/>'
    path = _hand_made(tmp_path / "dtd.xlsx", _sheet(_HEADER), members={"xl/data.bin": xxe})
    refusal = _refusal(read, path)
    assert (refusal.status, refusal.code, refusal.detail) == (400, "bad_xlsx", _ENTITIES)


def test_a_prolog_longer_than_the_check_reads_is_refused(read: Any, tmp_path: Path) -> None:
    long = '<?xml version="1.0"?><!--' + "x" * PROLOG_BYTES + "-->" + _DOCTYPE + _STRINGS
    path = _hand_made(tmp_path / "long.xlsx", _sheet(_SHARED_HEADER), shared_strings=long)
    refusal = _refusal(read, path)
    assert (refusal.status, refusal.code) == (400, "bad_xlsx")
    assert "xl/sharedStrings.xml" in refusal.detail and "root element" in refusal.detail


def test_comments_instructions_and_binary_parts_pass_the_check(read: Any, tmp_path: Path) -> None:
    shared_strings = '<?xml version="1.0"?>\n<!-- <!DOCTYPE in a comment> -->\n<?pi x?>' + _STRINGS
    picture = b"\x89PNG\r\n\x1a\n" + b"<!DOCTYPE>" * 10  # not XML: never parsed
    path = _hand_made(
        tmp_path / "clean.xlsx",
        _sheet(_SHARED_HEADER),
        shared_strings=shared_strings,
        members={"xl/media/image1.png": picture},
    )
    assert read(path).header == ["a"]


# --- value conversion -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1 + 0.2, "0.3"),
        (12.5, "12.5"),
        (1e7, "10000000"),
        (1.0, "1"),
        (-0.0, "0"),
        (1 / 3, "0.333333333333333"),
        (2 / 3, "0.666666666666667"),
        (1e-7, "0.0000001"),
        (123456.789, "123456.789"),
        (1.5e20, "150000000000000000000"),
        (12345678901234567890.0, "12345678901234600000"),
        (float(2**53 - 1), "9007199254740991"),
    ],
)
def test_number_text(value: float, text: str) -> None:
    assert number_text(value) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_text_is_the_rounding_to_15_digits(value: float) -> None:
    # number_text takes a shortcut past the Decimal for most floats
    if value.is_integer() and abs(value) < 2**53:
        assert number_text(value) == str(int(value))
    else:
        assert number_text(value) == format(Decimal(format(value, ".15g")), "f")


@pytest.mark.parametrize(
    ("value", "number_format", "text"),
    [
        (None, None, None),
        ("", None, ""),
        (" x ", None, " x "),
        (True, None, "true"),
        (12345678901234567890, None, "12345678901234567890"),
        (dt.datetime(2024, 1, 15), "yyyy-mm-dd", "2024-01-15"),
        (dt.datetime(2024, 1, 15), "yyyy-mm-dd h:mm", "2024-01-15T00:00:00"),
        (dt.datetime(2024, 1, 15, 6), "yyyy-mm-dd", "2024-01-15T06:00:00"),
        (dt.datetime(2024, 1, 15, 6, 0, 1, 500000), None, "2024-01-15T06:00:01.500"),
        (dt.date(2024, 1, 15), None, "2024-01-15"),
        (dt.time(23, 59, 59), None, "23:59:59"),
        (dt.timedelta(hours=36, minutes=5), None, "36:05:00"),
        (-dt.timedelta(minutes=90), None, "-01:30:00"),
    ],
)
def test_cell_text(value: Any, number_format: str | None, text: str | None) -> None:
    assert cell_text(value, number_format) == text
