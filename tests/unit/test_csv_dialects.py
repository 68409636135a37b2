"""CSV dialects and encodings: what ``read_csv`` detects, sniffs and refuses.

Unit tests and a hypothesis round trip call ``read_csv`` directly (no database); so do
the csv-spectrum conformance cases (their import through the API is pinned by
``tests/integration/test_csv_spectrum_imports.py``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from csv_spectrum import SPECTRUM_CASES, SPECTRUM_VERSION, spectrum_case
from importq.errors import Refusal
from importq.ingest.csv_reader import SNIFF_BYTES, read_csv, sniff_delimiter
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload, within_limits
from importq.ingest.text_encoding import find_bad_byte

Table = list[list[str]]


def parse(data: bytes, **options: Any) -> ParsedUpload:
    return read_csv(io.BytesIO(data), **options)


def table(upload: ParsedUpload) -> tuple[list[str], list[tuple[int, list[str | None]]]]:
    """The header and each row's (line, values); every row must be well formed."""
    rows = []
    for line, values, problem in upload.rows:
        assert problem is None, (line, values, problem)
        rows.append((line, list(values)))
    return upload.header, rows


def refusal(data: bytes, **options: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        table(parse(data, **options))
    return caught.value


SAMPLE = "nom;commune;profondeur\r\nGrotte à Élodie;Saint-Étienne;12,5\r\n"
SAMPLE_TABLE = (
    ["nom", "commune", "profondeur"],
    [(2, ["Grotte à Élodie", "Saint-Étienne", "12,5"])],
)


# ------------------------------------------------------------------------ encodings


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8], ids=["no-bom", "bom"])
def test_utf8_with_or_without_bom(bom: bytes) -> None:
    upload = parse(bom + SAMPLE.encode())
    assert table(upload) == SAMPLE_TABLE  # the BOM is not part of the first header cell
    assert (upload.encoding, upload.delimiter) == ("utf-8", ";")


@pytest.mark.parametrize(
    ("bom", "codec"),
    [
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
    ],
)
def test_utf16_and_utf32_are_read_by_their_bom(bom: bytes, codec: str) -> None:
    text = SAMPLE + "Gouffre 😀;Ω;3\r\n"  # a character outside the BMP: a surrogate pair
    upload = parse(bom + text.encode(codec))
    header, rows = table(upload)
    assert (header, rows[:1]) == SAMPLE_TABLE
    assert rows[1] == (3, ["Gouffre 😀", "Ω", "3"])
    assert (upload.encoding, upload.delimiter) == (codec, ";")


def test_a_utf16le_bom_then_a_nul_is_not_taken_for_utf32() -> None:
    # FF FE 00 00 opens both a UTF-32LE file and a UTF-16LE one whose text starts
    # with NUL: the encoding that decodes the file wins.
    upload = parse("\x00a,b\n1,2\n".encode("utf-16"))
    assert upload.encoding == "utf-16-le"
    assert table(upload) == (["\x00a", "b"], [(2, ["1", "2"])])


def test_utf16_written_by_python_is_read() -> None:
    assert table(parse(SAMPLE.encode("utf-16"))) == SAMPLE_TABLE


def test_windows_1252_is_detected_with_accents_and_the_euro_sign() -> None:
    text = (
        "nom,prix,note\r\n"
        "Gouffre de l’Œil,12 €,« très » beau\r\n"
        "Höhle Straße,5 €,Ça descend – 30 m…\r\n"
        "Cueva Peñas,°,“ok”\r\n"
    )
    upload = parse(text.encode("cp1252"))
    assert upload.encoding == "cp1252"
    assert table(upload) == (
        ["nom", "prix", "note"],
        [
            (2, ["Gouffre de l’Œil", "12 €", "« très » beau"]),
            (3, ["Höhle Straße", "5 €", "Ça descend – 30 m…"]),
            (4, ["Cueva Peñas", "°", "“ok”"]),
        ],
    )


@pytest.mark.parametrize("line_end", ["\r\n", "\n", "\r"])
def test_windows_1252_is_detected_whatever_the_line_ends(line_end: str) -> None:
    upload = parse(SAMPLE.replace("\r\n", line_end).encode("cp1252"))
    assert upload.encoding == "cp1252"
    assert table(upload) == SAMPLE_TABLE


@pytest.mark.parametrize(
    "name", ["latin-1", "ISO-8859-1", "latin1", "windows-1252", "cp1252", " Latin-1 "]
)
def test_a_given_single_byte_encoding_is_used(name: str) -> None:
    # ÿ (0xFF) is a byte detection does not take for Windows-1252 (it is what binary
    # junk is made of), so only the given encoding reads this file.
    data = "nom,commune\nMaison,L'Haÿ-les-Roses\n".encode("latin-1")
    assert refusal(data).code == "bad_encoding"
    assert table(parse(data, encoding=name)) == (
        ["nom", "commune"],
        [(2, ["Maison", "L'Haÿ-les-Roses"])],
    )


def test_latin1_reads_bytes_that_windows_1252_leaves_undefined() -> None:
    data = b"a,b\nx\x81y,z\n"
    assert table(parse(data, encoding="latin-1"))[1] == [(2, ["x\x81y", "z"])]
    bad = refusal(data, encoding="windows-1252")
    assert (bad.code, bad.extra) == ("bad_encoding", {"line": 2, "offset": 5})
    assert "Windows-1252" in bad.detail and "0x81" in bad.detail


def test_a_given_encoding_beats_detection() -> None:
    # Valid UTF-8 read as Latin-1 on request: the client knows best (mojibake and all).
    assert table(parse("a,b\né,1\n".encode(), encoding="latin-1"))[1] == [(2, ["Ã©", "1"])]


@pytest.mark.parametrize("name", ["utf-8", "UTF8", "utf-8-sig"])
def test_a_given_utf8_skips_a_bom(name: str) -> None:
    upload = parse(codecs.BOM_UTF8 + SAMPLE.encode(), encoding=name)
    assert table(upload) == SAMPLE_TABLE
    assert upload.encoding == "utf-8"


@pytest.mark.parametrize(
    ("name", "data", "codec"),
    [
        ("utf-16", SAMPLE.encode("utf-16-le"), "utf-16-le"),  # no BOM: little-endian
        ("utf-16", codecs.BOM_UTF16_BE + SAMPLE.encode("utf-16-be"), "utf-16-be"),
        ("UTF-16BE", SAMPLE.encode("utf-16-be"), "utf-16-be"),
        ("utf-16-le", codecs.BOM_UTF16_LE + SAMPLE.encode("utf-16-le"), "utf-16-le"),
        ("utf-32", SAMPLE.encode("utf-32-le"), "utf-32-le"),
    ],
)
def test_a_given_utf16_or_utf32_takes_the_byte_order_from_a_bom(
    name: str, data: bytes, codec: str
) -> None:
    upload = parse(data, encoding=name)
    assert table(upload) == SAMPLE_TABLE
    assert upload.encoding == codec


@pytest.mark.parametrize(
    "name",
    # Codecs Python has but importq does not take: slow ones (punycode decodes in
    # quadratic time), bytes-to-bytes ones and rarely needed ones.
    ["nope", "utf-9", "rot13", "base64", "hex", "undefined", "", "punycode", "idna", "cp437"],
)
def test_an_encoding_outside_the_allow_list_is_400_naming_the_allowed(name: str) -> None:
    bad = refusal(b"a,b\n1,2\n", encoding=name)
    assert (bad.status, bad.code) == (400, "unknown_encoding")
    assert repr(name) in bad.detail and "shift_jis" in bad.detail
    assert "gb18030" in bad.extra["accepted"]


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("latin-1", "iso8859-1"),
        ("Windows-1250", "cp1250"),
        ("sjis", "shift_jis"),
        ("cp932", "cp932"),
        ("eucjp", "euc_jp"),
        ("GB18030", "gb18030"),
        ("big5", "big5"),
        ("koi8_r", "koi8-r"),
        ("iso-8859-16", "iso8859-16"),
    ],
)
def test_an_allowed_encoding_is_taken_by_any_of_its_aliases(name: str, codec: str) -> None:
    text = "nom,ville\nA,B\n"
    assert parse(text.encode(codec), encoding=name).encoding == codec


# ------------------------------------------------------- bytes that do not decode


def test_bad_utf8_keeps_the_message_offset_and_line() -> None:
    bad = refusal(b"id,x\r\nok,1\r\nGouffre \xff,x\r\n")
    assert (bad.status, bad.code) == (400, "bad_encoding")
    assert bad.extra == {"line": 3, "offset": 20}
    assert bad.detail.startswith(
        "The file is not valid UTF-8: byte 0xff at offset 20 (line 3) cannot be decoded."
    )
    assert "encoding=" in bad.detail  # how to name another encoding


def test_a_utf8_file_with_one_stray_windows_1252_byte_stays_utf8_and_is_refused() -> None:
    data = "nom,x\nSaint-Étienne,1\n".encode() + b"Gouffre \xe9,2\n"
    bad = refusal(data)
    assert bad.extra == {"line": 3, "offset": len("nom,x\nSaint-Étienne,1\n".encode()) + 8}
    assert "not valid UTF-8" in bad.detail


@pytest.mark.parametrize(
    "junk",
    [b"x\xff\xfe,y", b"\x00\x01\xe9", b"caf\xe9\x1a", b"\xfe", b"\xd0\xf0"],
)
def test_junk_is_not_taken_for_windows_1252(junk: bytes) -> None:
    bad = refusal(b"a,b\r\nc,d\r\n" + junk + b"\r\n")
    assert bad.code == "bad_encoding" and bad.extra["line"] == 3
    assert "not valid UTF-8" in bad.detail


def test_a_file_that_ends_inside_a_utf8_character_is_400() -> None:
    bad = refusal(b"a,b\n\xc3\xa9,caf\xc3")  # UTF-8 (é) cut short at the end
    assert bad.extra == {"line": 2, "offset": 11}
    assert "ends inside a character" in bad.detail


def test_bad_bytes_after_a_bom_are_counted_from_the_start_of_the_file() -> None:
    bad = refusal(codecs.BOM_UTF8 + b"a,b\n1,\xff\n")
    assert bad.extra == {"line": 2, "offset": 9}
    assert "UTF-8" in bad.detail


@pytest.mark.parametrize("line_end", ["\r\n", "\n", "\r"])
def test_bad_utf16_names_the_line_counted_in_encoded_newlines(line_end: str) -> None:
    # U+0A0D and U+0D0A hold 0x0A and 0x0D bytes that are not newlines; the lone
    # surrogate on line 4 does not decode.
    good = line_end.join(["a,b", "1,\u0a0d", "2,\u0d0a", "3,"])
    data = codecs.BOM_UTF16_LE + good.encode("utf-16-le") + b"\x00\xd8" + b"x\x00"
    bad = refusal(data)
    offset = 2 + len(good.encode("utf-16-le"))
    assert (bad.code, bad.extra) == ("bad_encoding", {"line": 4, "offset": offset})
    assert "UTF-16LE" in bad.detail and "0x00 0xd8" in bad.detail
    same = refusal(data[2:], encoding="utf-16-le")
    assert same.extra == {"line": 4, "offset": offset - 2}


def test_utf16_with_an_odd_number_of_bytes_ends_inside_a_character() -> None:
    data = codecs.BOM_UTF16_BE + "a,b\n1,2\n".encode("utf-16-be") + b"\x00"
    bad = refusal(data)
    assert bad.extra == {"line": 3, "offset": len(data)}
    assert "UTF-16BE" in bad.detail and "ends inside a character" in bad.detail


def test_bad_bytes_in_a_given_utf8_encoding_are_400() -> None:
    bad = refusal("a;b\r\nx;é\r\n".encode("cp1252"), encoding="utf-8")
    assert (bad.code, bad.extra) == ("bad_encoding", {"line": 2, "offset": 7})
    assert "encoding=" not in bad.detail  # the client named it: no hint to name it


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 7, 64])
@pytest.mark.parametrize(
    ("codec", "bad"),
    [("utf-8", b"\xff"), ("utf-16-le", b"\x00\xdc"), ("utf-32-be", b"\xff\xff\xff\xff")],
)
def test_the_bad_byte_is_found_whatever_the_block_size(
    block_size: int, codec: str, bad: bytes
) -> None:
    # CRLFs and multi-byte characters cut between blocks must not move the answer.
    text = "é,€\r\n😀,x\r\ry\n\r\nzz,"  # line breaks: CRLF, CR, CR, LF, CRLF
    data = text.encode(codec) + bad + b"\x00" * 8
    found = find_bad_byte(io.BytesIO(data), codec, block_size=block_size)
    assert found is not None
    assert (found.offset, found.line, found.bad[:1]) == (len(text.encode(codec)), 6, bad[:1])
    assert find_bad_byte(io.BytesIO(text.encode(codec)), codec, block_size=block_size) is None


# ---------------------------------------------------------------------- delimiters


DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
# Cells holding the other candidates unquoted, as real files do (decimal commas in a
# semicolon file, commas in a TSV, ...).
TRICKY = [["name", "depth", "note"], ["a,b", "12,5", "x;y|z"], ["c|d", "7", "p, q; r"]]


def written(rows: Table, delimiter: str, line_end: str = "\r\n") -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter, lineterminator=line_end).writerows(rows)
    return out.getvalue().encode()


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"], ids=DELIMITER_NAMES.get)
def test_each_delimiter_is_sniffed(delimiter: str) -> None:
    upload = parse(written(TRICKY, delimiter))
    assert upload.delimiter == delimiter
    assert table(upload) == (TRICKY[0], [(2, TRICKY[1]), (3, TRICKY[2])])


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"], ids=DELIMITER_NAMES.get)
def test_each_delimiter_can_be_given_by_character_or_name(delimiter: str) -> None:
    data = written(TRICKY, delimiter)
    name = DELIMITER_NAMES[delimiter]
    for given_as in (delimiter, name, name.upper()):
        upload = parse(data, delimiter=given_as)
        assert upload.delimiter == delimiter
        assert table(upload) == (TRICKY[0], [(2, TRICKY[1]), (3, TRICKY[2])])


def test_a_given_delimiter_beats_sniffing() -> None:
    upload = parse(b"a;b,c\n1;2,3\n", delimiter=",")
    assert table(upload) == (["a;b", "c"], [(2, ["1;2", "3"])])
    assert parse(b"a;b,c\n1;2,3\n", delimiter="\\t").delimiter == "\t"


@pytest.mark.parametrize("name", ["x", ":", " ", ",,", "space", "\\n", ""])
def test_an_unknown_delimiter_is_400(name: str) -> None:
    bad = refusal(b"a,b\n1,2\n", delimiter=name)
    assert (bad.status, bad.code) == (400, "bad_delimiter")
    assert bad.extra["accepted"] == ["comma", "semicolon", "tab", "pipe"]


def test_a_single_column_falls_back_to_comma() -> None:
    upload = parse(b"name\nGrotte;Nord\nPuits|Sud\n")
    assert upload.delimiter == ","
    assert table(upload) == (["name"], [(2, ["Grotte;Nord"]), (3, ["Puits|Sud"])])


def test_sniffing_follows_the_records_when_the_header_is_ambiguous() -> None:
    # Split on ",", the header has two fields but the records one; split on ";", all
    # have two fields.
    assert sniff_delimiter("a,b;c\n1;2\n3;4\n") == ";"
    # A tie goes to the earlier of , ; TAB |.
    assert sniff_delimiter("a,b;c\n") == ","
    assert sniff_delimiter("a;b;c,d\n") == ";"  # the wider header


def test_sniffing_reads_quoted_fields() -> None:
    text = 'name;note\n"a;b";"x,y,z"\n"multi\nline, with; all";"q"\n'
    assert sniff_delimiter(text) == ";"
    assert table(parse(text.encode()))[1] == [
        (2, ["a;b", "x,y,z"]),
        (3, ["multi\nline, with; all", "q"]),
    ]


def test_sniffing_uses_the_head_of_a_big_file_only() -> None:
    rows = [["name", "note"]] + [[f"g{i}", "1,5"] for i in range(20_000)]
    data = written(rows, ";")
    assert len(data) > 3 * SNIFF_BYTES
    upload = parse(data)
    assert upload.delimiter == ";"
    assert sum(1 for _ in upload.rows) == 20_000


def test_a_record_cut_by_the_end_of_the_head_is_not_judged() -> None:
    # Both "," and "|" split the header in two; the one whole record agrees with "|".
    # The last record, "p,q" cut from (say) "p,q|r", would agree with "," and win it
    # the tie, were it judged: in a head it is not, in a whole file it is.
    text = "a,b|c\n1|2\np,q"
    assert sniff_delimiter(text, complete=False) == "|"
    assert sniff_delimiter(text, complete=True) == ","


# ------------------------------------------------- quoting, line ends, blank lines


QUOTED = [
    ["id", "text"],
    ["1", "a, b; c\t d | e"],
    ["2", 'he said "hi", twice ""'],
    ["3", "two\r\nlines\nand\rthree"],
    ["4", ""],
]


@pytest.mark.parametrize("line_end", ["\r\n", "\n", "\r"], ids=["crlf", "lf", "cr"])
def test_quoted_fields_and_line_ends(line_end: str) -> None:
    rows = QUOTED
    data = written(rows, ",", line_end)
    if line_end != "\r\n":
        # Python 3.11's writer quotes only its own line end's characters: quote by hand.
        data = line_end.join(
            ",".join(f'"{cell.replace(chr(34), 2 * chr(34))}"' for cell in row) for row in rows
        ).encode()
    upload = parse(data)
    assert upload.delimiter == ","
    assert table(upload) == (rows[0], [(line, row) for line, row in enumerate(rows[1:], 2)])


@pytest.mark.parametrize("line_end", ["\r\n", "\n", "\r"], ids=["crlf", "lf", "cr"])
def test_blank_records_keep_their_number_and_trailing_empty_lines_are_ignored(
    line_end: str,
) -> None:
    lines = ["a;b", "1;2", "", "3;4", "  ", '"x\ny";5', "", "", ""]
    upload = parse(line_end.join(lines).encode())
    assert table(upload) == (["a", "b"], [(2, ["1", "2"]), (4, ["3", "4"]), (6, ["x\ny", "5"])])


def test_ragged_records_are_row_failures_not_refusals() -> None:
    rows = list(parse(b"a,b\n1,2,3\n4\n5,6\n").rows)
    assert [(r.line, r.problem) for r in rows] == [
        (2, "expected 2 fields, found 3"),
        (3, "expected 2 fields, found 1"),
        (4, None),
    ]


def test_what_was_detected_survives_the_limits() -> None:
    upload = within_limits(parse(SAMPLE.encode("utf-16")), UploadLimits())
    assert (upload.encoding, upload.delimiter) == ("utf-16-le", ";")
    assert table(upload) == SAMPLE_TABLE


# -------------------------------------------------------------- hypothesis round trip

CANDIDATES = ",;\t|"
LINE_ENDS = ["\r\n", "\n", "\r"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-be-bom"]
SPECIALS = st.sampled_from([",", ";", "\t", "|", '"', "\r", "\n", " ", "\x00", "é", "€"])
ANY_CHARACTER = st.characters(exclude_categories=["Cs"])


def cells(exclude: str) -> st.SearchStrategy[str]:
    """Non-empty strings without surrounding whitespace, none of ``exclude`` inside."""
    return (
        st.text(st.one_of(SPECIALS, ANY_CHARACTER), min_size=1, max_size=12)
        .map(lambda text: "".join(c for c in text if c not in exclude).strip())
        .filter(bool)
    )


@st.composite
def dialect_tables(draw: st.DrawFn) -> tuple[Table, str, str, str]:
    delimiter = draw(st.sampled_from(CANDIDATES))
    line_end = draw(st.sampled_from(LINE_ENDS))
    encoding = draw(st.sampled_from(ENCODINGS))
    # Python 3.11's csv writer quotes a cell holding its delimiter, its quote character
    # or a character of its own line end, and nothing else: a lone CR in an LF file
    # (or LF in a CR file) would go out unquoted, which no reader reads back as a cell.
    # So cells hold only the line breaks the writer quotes.
    breaks = "\r\n".replace(line_end, "") if line_end != "\r\n" else ""
    # Sniffing is by nature ambiguous for some tables, so these are left out:
    # - a single column (no delimiter to see: read with ",", the fallback);
    # - header cells holding a candidate delimiter: "a,b;c" written with ";" splits as
    #   well on "," (the writer quotes only its own delimiter), and records may agree;
    # - a first header cell starting with U+FEFF, which in UTF-8 is a BOM.
    width = draw(st.integers(min_value=2, max_value=5))
    header = draw(
        st.lists(cells(CANDIDATES + breaks), min_size=width, max_size=width, unique=True).filter(
            lambda names: not names[0].startswith("\ufeff")
        )
    )
    rows = draw(
        st.lists(st.lists(cells(breaks), min_size=width, max_size=width), min_size=0, max_size=6)
    )
    return [header, *rows], delimiter, line_end, encoding


def encoded(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(dialect_tables())
def test_any_table_written_by_pythons_csv_writer_reads_back(
    case: tuple[Table, str, str, str],
) -> None:
    rows, delimiter, line_end, encoding = case
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter, lineterminator=line_end).writerows(rows)
    data = encoded(out.getvalue(), encoding)
    expected = (rows[0], [(line, row) for line, row in enumerate(rows[1:], start=2)])

    upload = parse(data)  # encoding detected, delimiter sniffed
    assert upload.delimiter == delimiter
    assert table(upload) == expected
    given_encoding = "utf-16" if encoding == "utf-16-be-bom" else encoding
    assert table(parse(data, delimiter=delimiter, encoding=given_encoding)) == expected


# ------------------------------------------------------------------ csv-spectrum


def test_spectrum_has_the_cases_of_the_pinned_version(spectrum: Path) -> None:
    version = json.loads((spectrum / "package.json").read_text(encoding="utf-8"))["version"]
    assert version == SPECTRUM_VERSION
    assert sorted(p.stem for p in (spectrum / "csvs").glob("*.csv")) == SPECTRUM_CASES
    assert sorted(p.stem for p in (spectrum / "json").glob("*.json")) == SPECTRUM_CASES


@pytest.mark.parametrize("name", SPECTRUM_CASES)
def test_spectrum_case_reads_as_expected(spectrum: Path, name: str) -> None:
    data, expected = spectrum_case(spectrum, name)
    upload = parse(data)
    assert (upload.encoding, upload.delimiter) == ("utf-8", ",")
    header, rows = table(upload)
    assert header == list(expected[0])
    assert rows == [(line, list(row.values())) for line, row in enumerate(expected, start=2)]


# ------------------------------------------------- limits checked while a record is read


def test_a_record_wider_than_the_limit_is_refused_before_it_is_built() -> None:
    limits = UploadLimits(max_columns=3, max_cell_chars=10)
    # Delimiters inside quotes do not count; the third record has four fields, on two
    # lines.
    data = b'a,b,c\n"1,2,3,4",x,y\n' + b"1,2,3\n" + b'1,"2\n",3,4\n'
    bad = refusal(data, limits=limits, delimiter=",")
    assert (bad.status, bad.code, bad.extra) == (413, "too_many_columns", {"limit": 3, "line": 4})


def test_a_cell_longer_than_the_limit_stops_the_reader_with_its_line() -> None:
    limits = UploadLimits(max_columns=3, max_cell_chars=10)
    data = b'a,b\n1,2\n"' + b"x" * 11 + b'",3\n'
    bad = refusal(data, limits=limits)
    assert (bad.code, bad.extra) == ("cell_too_long", {"limit": 10, "line": 3})
    assert table(parse(b"a,b\n" + b"y" * 10 + b",2\n", limits=limits))[1] == [(2, ["y" * 10, "2"])]


def test_a_line_longer_than_any_record_within_the_limits_is_not_read_whole() -> None:
    limits = UploadLimits(max_columns=2, max_cell_chars=3)
    data = b"a,b\n" + b"x" * 10_000_000  # one line, no line end
    bad = refusal(data, limits=limits, delimiter=",")
    assert (bad.code, bad.extra["line"], bad.extra["limit"]) == ("record_too_long", 2, 20)


@given(st.text(alphabet='a,"\n\r', max_size=60))
def test_a_record_is_refused_for_its_width_exactly_when_csv_reads_it_too_wide(
    text: str,
) -> None:
    """The guard counts delimiters as csv does, stray quotes included: a record is
    refused iff csv reads more than the limit's fields in it, naming that record."""
    limits = UploadLimits(max_columns=3, max_cell_chars=1000)
    records = list(csv.reader(io.StringIO(text, newline=""), strict=False))
    too_wide = [number for number, record in enumerate(records, 1) if len(record) > 3]
    try:
        list(parse(text.encode(), limits=limits, delimiter=",").rows)
    except Refusal as refused:
        if refused.code != "too_many_columns":
            assert not too_wide or too_wide[0] > refused.extra.get("line", 0)
            return
        assert too_wide and refused.extra["line"] == too_wide[0]
    else:
        assert not too_wide
