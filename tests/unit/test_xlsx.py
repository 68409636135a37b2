"""read_xlsx over real files: workbooks written by openpyxl, and hand-made zips for what
openpyxl cannot write (cached formula values, float noise, entity bombs, zip bombs)."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import openpyxl  # type: ignore[import-untyped]
import pytest
from openpyxl.styles import Font  # type: ignore[import-untyped]

from importq.errors import Refusal
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload
from importq.ingest.xlsx_reader import ArchiveLimits, cell_text, number_text, read_xlsx
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


def _hand_made(
    path: Path, sheet_xml: str, *, workbook_xml: str = _WORKBOOK, content_types: bool = True
) -> Path:
    """A minimal XLSX written member by member (no cached-value limits of openpyxl)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if content_types:
            archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", workbook_xml)
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        archive.writestr("xl/styles.xml", _STYLES)
        archive.writestr("xl/worksheets/sheet1.xml", sheet_xml)
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
        + '<row r="6"><c r="A6"><v>123456789012345678901</v></c><c r="B6"><v>-1E-3</v></c></row>'
    )
    upload = read(_hand_made(tmp_path / "numbers.xlsx", _sheet(rows)))
    assert [list(row.values) for row in upload.rows] == [
        ["0.3", "10000000"],
        ["2024-01-15", "2024-01-15T00:00:00"],
        ["2024-01-15T12:00:00", "2024-03-01"],
        ["true", "#DIV/0!"],
        ["123456789012345678901", "-0.001"],  # an integer in the XML is kept exactly
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
        _HEADER + '<row r="2"><c r="A2"><v>1</v></c></row><row r="3"><c r="A3"><v>x</v></c></row>'
    )
    upload = read(_hand_made(tmp_path / "broken.xlsx", _sheet(rows)))
    assert upload.header == ["a", "b"]
    with pytest.raises(Refusal) as caught:
        list(upload.rows)
    assert (caught.value.status, caught.value.code) == (400, "bad_xlsx")
    assert "cannot be read after row 2" in caught.value.detail
    assert "/" not in caught.value.detail  # no server path in the message


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


def test_defusedxml_is_required(monkeypatch: pytest.MonkeyPatch, workbook_path: Path) -> None:
    monkeypatch.setattr(openpyxl, "DEFUSEDXML", False)
    with workbook_path.open("rb") as binary, pytest.raises(RuntimeError, match="defusedxml"):
        read_xlsx(binary)


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
