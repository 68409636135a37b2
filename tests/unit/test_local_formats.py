"""Local formats: a float column's decimal comma, a date column's declared formats.

Pure tests of the definition (TOML keys, :func:`check_date_format`, the words the API
shows) and of the row rules (converters, and the column screen, which must never pass a
value the converter refuses nor read one differently). That SQL writes the converter's
value is pinned in ``tests/integration/test_rules_in_sql.py``.
"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from importq.rules.datasets import (
    Column,
    ColumnType,
    Dataset,
    DatasetError,
    check_date_format,
    parse_datasets,
)
from importq.rules.row_rules import Coerced, Converter, RowChecker, _screen, converter
from importq.rules.sql_screen import Screen

PROPERTIES = settings(max_examples=300, deadline=None)
GROUP_SEPARATORS = (" ", "\u00a0", "\u202f")


def convert(column: Column) -> Converter:
    found = converter(column)
    assert found is not None
    return found


COMMA = Column("share", "share", ColumnType.FLOAT, decimal="comma")
DOT = Column("share", "share", ColumnType.FLOAT)
BOUNDED_COMMA = Column("share", "share", ColumnType.FLOAT, min=-10, max=1000, decimal="comma")
NO_FORMAT = Column("found", "found", ColumnType.DATE)


def dated(*formats: str) -> Column:
    return Column("found", "found", ColumnType.DATE, formats=formats)


# --- decimal comma ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("45,123", 45.123),
        ("45.123", 45.123),  # XLSX and JSON numbers come with a dot
        ("-1 234,5", -1234.5),
        ("1\u00a0234,5", 1234.5),
        ("1\u202f234\u202f567,25", 1234567.25),
        ("1 234 567", 1234567.0),
        ("1 234.5", 1234.5),
        (",5", 0.5),
        ("-,5", -0.5),
        ("+5,", 5.0),
        ("1,5e3", 1500.0),
        ("0", 0.0),
    ],
)
def test_a_decimal_comma_float_reads_either_mark_and_grouped_digits(
    text: str, value: float
) -> None:
    assert convert(COMMA)(text) == (value, None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1.234,5", '"1.234,5" is not a number: write it without a thousands separator'),
        ("1,234.5", '"1,234.5" is not a number: write it without a thousands separator'),
        ("1,2,3", '"1,2,3" is not a number'),
        ("1.2.3", '"1.2.3" is not a number'),
        ("12 34,5", '"12 34,5" is not a number'),
        ("1234 567", '"1234 567" is not a number'),
        ("1 234 56", '"1 234 56" is not a number'),
        ("1  234", '"1  234" is not a number'),
        ("1_234", '"1_234" is not a number'),
        ("1'234,5", '"1\'234,5" is not a number'),
        (",", '"," is not a number'),
        ("1,5 ", '"1,5 " is not a number'),  # cells arrive trimmed: never this
        ("nan", '"nan" is not a number'),
        ("1e999", '"1e999" is out of range'),
        ("1,5e999", '"1,5e999" is out of range'),
        ("-1,0E-400", '"-1,0E-400" is out of range'),
    ],
)
def test_a_decimal_comma_float_refuses_other_forms(text: str, problem: str) -> None:
    assert convert(COMMA)(text) == (None, problem)


def test_a_decimal_comma_float_keeps_its_bounds_and_quotes_the_text_as_uploaded() -> None:
    read = convert(BOUNDED_COMMA)
    assert read("1 000,0") == (1000.0, None)
    assert read("1 000,5") == (1000.5, "1 000,5 is above 1000")
    assert read("-10,25") == (-10.25, "-10,25 is below -10")


def test_a_dot_float_and_an_int_know_no_comma() -> None:
    assert convert(DOT)("45,123") == (None, '"45,123" is not a number')
    assert convert(DOT)("1 234") == (None, '"1 234" is not a number')
    whole = convert(Column("n", "n", ColumnType.INT))
    assert whole("1 234") == (None, '"1 234" is not a whole number')


@st.composite
def plain_numbers(draw: st.DrawFn) -> tuple[str, str, str]:
    """A sign, a whole part and a fraction (digits, perhaps empty)."""
    sign = draw(st.sampled_from(["", "-", "+"]))
    whole = draw(st.from_regex(r"[0-9]{0,20}", fullmatch=True))
    fraction = draw(st.from_regex(r"[0-9]{0,20}", fullmatch=True))
    return sign, whole, fraction


def grouped(whole: str, separators: list[str]) -> str:
    """``whole`` grouped by threes from the right, the n-th group after separators[n]."""
    head_length = len(whole) % 3 or 3
    groups = [whole[head_length:][i : i + 3] for i in range(0, len(whole) - head_length, 3)]
    return whole[:head_length] + "".join(
        separators[i % len(separators)] + group for i, group in enumerate(groups)
    )


@PROPERTIES
@given(plain_numbers(), st.lists(st.sampled_from(GROUP_SEPARATORS), min_size=1, max_size=3))
def test_a_comma_form_reads_as_its_dot_form(
    number: tuple[str, str, str], separators: list[str]
) -> None:
    sign, whole, fraction = number
    dotted = f"{sign}{whole}.{fraction}"
    expected = convert(DOT)(dotted)
    assert convert(COMMA)(dotted) == expected
    assert convert(COMMA)(f"{sign}{whole},{fraction}")[0] == expected[0]
    if whole and not whole.startswith("0"):
        assert convert(COMMA)(f"{sign}{grouped(whole, separators)},{fraction}")[0] == expected[0]


# --- dates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formats", "text", "value"),
    [
        (("DD/MM/YYYY",), "25/04/2026", date(2026, 4, 25)),
        (("DD/MM/YYYY",), "03/04/2026", date(2026, 4, 3)),
        (("DD/MM/YYYY",), "3/4/2026", date(2026, 4, 3)),
        (("DD/MM/YYYY",), "29/02/2024", date(2024, 2, 29)),
        (("MM/DD/YYYY",), "03/04/2026", date(2026, 3, 4)),
        (("MM/DD/YYYY",), "12/31/2026", date(2026, 12, 31)),
        (("YYYY.MM.DD",), "2026.4.3", date(2026, 4, 3)),
        (("DD-MM-YYYY",), "03-04-2026", date(2026, 4, 3)),
        (("DD MM YYYY",), "3 4 2026", date(2026, 4, 3)),
        (("YYYY-MM-DD",), "2026-4-3", date(2026, 4, 3)),
        # YYYY-MM-DD (and YYYYMMDD) are always read.
        (("DD/MM/YYYY",), "2026-04-03", date(2026, 4, 3)),
        (("DD/MM/YYYY",), "20260403", date(2026, 4, 3)),
        # The first format that matches decides.
        (("DD/MM/YYYY", "MM/DD/YYYY"), "03/04/2026", date(2026, 4, 3)),
        (("DD.MM.YYYY", "MM/DD/YYYY"), "03/04/2026", date(2026, 3, 4)),
        (("DD.MM.YYYY", "MM/DD/YYYY"), "03.04.2026", date(2026, 4, 3)),
    ],
)
def test_a_date_column_reads_its_formats_then_iso(
    formats: tuple[str, ...], text: str, value: date
) -> None:
    assert convert(dated(*formats))(text) == (value, None)


@pytest.mark.parametrize(
    ("formats", "text"),
    [
        (("DD/MM/YYYY",), "31/02/2026"),
        (("DD/MM/YYYY",), "29/02/2026"),
        (("DD/MM/YYYY",), "00/04/2026"),
        (("DD/MM/YYYY",), "3/13/2026"),
        (("DD/MM/YYYY",), "003/04/2026"),
        (("DD/MM/YYYY",), "3/4/26"),
        (("DD/MM/YYYY",), "3/4/02026"),
        (("DD/MM/YYYY",), "3-4-2026"),
        (("DD/MM/YYYY",), "3/4-2026"),
        (("DD/MM/YYYY",), "01/01/0000"),
        (("DD/MM/YYYY",), "٣/4/2026"),
        (("DD/MM/YYYY",), "2026-02-30"),
        (("MM/DD/YYYY",), "25/04/2026"),
        # A day the first matching format does not name fails; no later format is tried.
        (("DD/MM/YYYY", "MM/DD/YYYY"), "12/31/2026"),
    ],
)
def test_a_date_column_refuses_what_its_formats_do_not_name(
    formats: tuple[str, ...], text: str
) -> None:
    wanted = " or ".join(formats)
    assert convert(dated(*formats))(text) == (None, f'"{text}" is not a date ({wanted})')


@PROPERTIES
@given(
    st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)),
    st.permutations(["DD", "MM", "YYYY"]),
    st.sampled_from("/.- "),
    st.booleans(),
)
def test_a_date_written_in_a_format_reads_back(
    day: date, order: list[str], separator: str, padded: bool
) -> None:
    form = separator.join(order)
    if form == "YYYY-DD-MM":  # refused: it would misread ISO dates
        return
    width = 2 if padded else 1
    parts = {"DD": f"{day.day:0{width}}", "MM": f"{day.month:0{width}}", "YYYY": f"{day.year:04}"}
    read = convert(dated(check_date_format(form)))
    assert read(separator.join(parts[token] for token in order)) == (day, None)
    assert read(day.isoformat()) == (day, None)


ADVICE = "write YYYY-MM-DD or declare the date format"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("03/04/2026", f'"03/04/2026" is ambiguous (3 April or 4 March): {ADVICE}'),
        ("3.4.2026", f'"3.4.2026" is ambiguous (3 April or 4 March): {ADVICE}'),
        ("12-1-2026", f'"12-1-2026" is ambiguous (12 January or 1 December): {ADVICE}'),
        # Never guessed, even when only one reading is a date.
        ("25/04/2026", f'"25/04/2026" is not a date (YYYY-MM-DD): {ADVICE}'),
        ("04/25/2026", f'"04/25/2026" is not a date (YYYY-MM-DD): {ADVICE}'),
        ("04/04/2026", f'"04/04/2026" is not a date (YYYY-MM-DD): {ADVICE}'),
        ("00/04/2026", f'"00/04/2026" is not a date (YYYY-MM-DD): {ADVICE}'),
        ("31/02/2026", f'"31/02/2026" is not a date (YYYY-MM-DD): {ADVICE}'),
        ("3/4-2026", '"3/4-2026" is not a date (YYYY-MM-DD)'),
        ("3/4/26", '"3/4/26" is not a date (YYYY-MM-DD)'),
        ("2026-02-30", '"2026-02-30" is not a date (YYYY-MM-DD)'),
        ("2026-4-3", '"2026-4-3" is not a date (YYYY-MM-DD)'),
        ("soon", '"soon" is not a date (YYYY-MM-DD)'),
    ],
)
def test_without_a_format_a_local_date_is_never_read(text: str, problem: str) -> None:
    assert convert(NO_FORMAT)(text) == (None, problem)


def test_without_a_format_iso_dates_are_read() -> None:
    assert convert(NO_FORMAT)("2026-04-03") == (date(2026, 4, 3), None)
    assert convert(NO_FORMAT)("20260403") == (date(2026, 4, 3), None)


# --- date formats ----------------------------------------------------------------------

RULE = (
    "A date format has DD, MM and YYYY once each, separated by the same one of"
    " /, ., - or a space, such as DD/MM/YYYY."
)


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("DD/MM/YYYY", "DD/MM/YYYY"),
        ("mm/dd/yyyy", "MM/DD/YYYY"),
        ("YYYY.MM.DD", "YYYY.MM.DD"),
        ("DD-MM-YYYY", "DD-MM-YYYY"),
        (" dd mm yyyy ", "DD MM YYYY"),
    ],
)
def test_a_date_format_is_normalised(text: str, form: str) -> None:
    assert check_date_format(text) == form


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("DD/MM", "it lacks YYYY"),
        ("", "it lacks DD"),
        ("DD/DD/YYYY", "it has DD twice"),
        ("DD/MM/YY", "YY is not DD, MM or YYYY"),
        ("JJ/MM/AAAA", "JJ is not DD, MM or YYYY"),
        ("D/M/YYYY", "D is not DD, MM or YYYY"),
        ("DDMMYYYY", "DDMMYYYY is not DD, MM or YYYY"),
        ("DD_MM_YYYY", "its separators are wrong"),
        ("DD/MM-YYYY", "its separators are wrong"),
        ("DD//MM//YYYY", "its separators are wrong"),
        ("/DD/MM/YYYY", "its separators are wrong"),
        ("DD, MM, YYYY", "its separators are wrong"),
        ("YYYY-DD-MM", "it would misread YYYY-MM-DD dates, which are always accepted"),
    ],
)
def test_a_bad_date_format_is_refused_with_what_is_allowed(text: str, problem: str) -> None:
    with pytest.raises(DatasetError) as refused:
        check_date_format(text)
    assert str(refused.value) == f'"{text}" is not a date format: {problem}. {RULE}'


# --- definitions -----------------------------------------------------------------------


def definition(column: str) -> str:
    return f"""
[datasets.caves]
dedup_key = ["code"]
[[datasets.caves.columns]]
name = "code"
field = "code"
required = true
[[datasets.caves.columns]]
name = "x"
field = "x"
{column}
"""


def the_column(column: str) -> Column:
    return parse_datasets(definition(column))["caves"].column("x")


def test_the_toml_keys_are_read() -> None:
    assert the_column('type = "float"\ndecimal = "comma"').decimal == "comma"
    assert the_column('type = "float"\ndecimal = "dot"').decimal == "dot"
    assert the_column('type = "float"').decimal == "dot"
    assert the_column('type = "date"').formats == ()
    dates = the_column('type = "date"\nformats = ["dd/mm/yyyy", "YYYY.MM.DD", "DD/MM/YYYY"]')
    assert dates.formats == ("DD/MM/YYYY", "YYYY.MM.DD")
    assert hash(dates) == hash(the_column('type = "date"\nformats = ["DD/MM/YYYY", "YYYY.MM.DD"]'))


@pytest.mark.parametrize(
    ("column", "problem"),
    [
        ('type = "int"\ndecimal = "comma"', 'decimal = "comma" is only for a float column'),
        ('decimal = "comma"', 'decimal = "comma" is only for a float column'),
        ('type = "float"\ndecimal = "point"', 'decimal must be "dot" or "comma", not \'point\''),
        ('type = "float"\ndecimal = ","', 'decimal must be "dot" or "comma", not \',\''),
        ('type = "timestamp"\nformats = ["DD/MM/YYYY"]', "formats are only for a date column"),
        ('type = "text"\nformats = ["DD/MM/YYYY"]', "formats are only for a date column"),
        (
            'type = "date"\nformats = "DD/MM/YYYY"',
            'formats must be a list of strings, such as ["DD/MM/YYYY"]',
        ),
        (
            'type = "date"\nformats = ["DD/MM/YY"]',
            f'"DD/MM/YY" is not a date format: YY is not DD, MM or YYYY. {RULE}',
        ),
    ],
)
def test_a_bad_local_format_is_refused(column: str, problem: str) -> None:
    with pytest.raises(DatasetError) as refused:
        parse_datasets(definition(column))
    assert str(refused.value) == f"dataset 'caves' column 2: {problem}"


def test_the_rules_in_words_tell_the_local_formats() -> None:
    assert COMMA.rules_in_words() == ["decimal comma accepted, such as 1 234,5"]
    assert DOT.rules_in_words() == []
    assert NO_FORMAT.rules_in_words() == []
    assert dated("DD/MM/YYYY").rules_in_words() == ["dates as DD/MM/YYYY or YYYY-MM-DD"]
    assert dated("DD.MM.YYYY", "YYYY-MM-DD").rules_in_words() == [
        "dates as DD.MM.YYYY or YYYY-MM-DD"
    ]


# --- the screens -----------------------------------------------------------------------

# Bounds that some grouped numbers are within, and some not.
WIDE_COMMA = Column("share", "share", ColumnType.FLOAT, min=-1e6, max=1e12, decimal="comma")
LOCAL = Dataset(
    name="local",
    label="local",
    table="local",
    columns=(
        Column("code", "code", required=True),
        WIDE_COMMA,
        Column("found", "found", ColumnType.DATE, formats=("DD/MM/YYYY", "YYYY.MM.DD")),
        Column("plain", "plain", ColumnType.DATE),
    ),
    dedup_key=("code",),
)


def test_the_sql_screen_leaves_local_formats_to_the_converters() -> None:
    positions = {column.name: p for p, column in enumerate(LOCAL.columns)}
    assert set(Screen.of(LOCAL, positions).judged) == {1, 2, 3}
    dotted = Dataset("d", "d", "d", (LOCAL.columns[0], DOT), ("code",))
    assert Screen.of(dotted, {"code": 0, "share": 1}).judged == {}


@st.composite
def comma_floats(draw: st.DrawFn) -> str:
    """Texts near a decimal-comma float: mostly valid, grouped or not, some not."""
    sign = draw(st.sampled_from(["", "-", "+"]))
    whole = draw(st.from_regex(r"[0-9]{0,12}", fullmatch=True))
    fraction = draw(st.from_regex(r"[0-9]{0,6}", fullmatch=True))
    if len(whole) > 3 and draw(st.integers(0, 3)) > 0:
        marks = st.sampled_from(GROUP_SEPARATORS if draw(st.booleans()) else ".,_")
        whole = grouped(whole, draw(st.lists(marks, min_size=1, max_size=3)))
    mark = draw(st.sampled_from([",", ",", ".", "", ",,", ".,"]))
    exponent = draw(st.sampled_from(["", "", "", "e3", "E-400", "e400"]))
    near = f"{sign}{whole}{mark}{fraction}{exponent}"
    noise = st.text(alphabet="0123456789,.+-eE \u00a0\u202f", max_size=12)
    return draw(st.one_of(st.just(near), st.just(near), noise))


@st.composite
def local_dates(draw: st.DrawFn) -> str:
    """Texts near a date of LOCAL's formats (DD/MM/YYYY, YYYY.MM.DD) or ISO, in those
    orders and others, with 1 to 3 digit days and months: mostly dates, some not."""
    day = draw(st.one_of(st.integers(1, 28), st.integers(0, 32)))
    month = draw(st.one_of(st.integers(1, 12), st.integers(0, 13)))
    year = draw(st.one_of(st.integers(1900, 2100), st.integers(0, 9999)))
    width = draw(st.sampled_from([1, 2, 2, 3]))
    parts = [f"{day:0{width}}", f"{month:0{width}}", f"{year:0{draw(st.sampled_from([4, 4, 2]))}}"]
    forms = [([0, 1, 2], "/"), ([2, 1, 0], "."), ([2, 1, 0], "-"), ([1, 0, 2], "/")]
    order, separator = draw(st.sampled_from(forms))
    if draw(st.integers(0, 3)) == 0:  # any order and separator
        order, separator = draw(st.permutations([0, 1, 2])), draw(st.sampled_from("/.- "))
    other = draw(st.sampled_from([separator] * 6 + list("/.- ")))
    near = parts[order[0]] + separator + parts[order[1]] + other + parts[order[2]]
    noise = st.text(alphabet="0123456789/.- ", max_size=12)
    return draw(st.one_of(st.just(near), st.just(near), noise))


@PROPERTIES
@given(st.lists(comma_floats(), max_size=20))
def test_the_column_screen_passes_only_what_the_converter_reads_alike(texts: list[str]) -> None:
    screen = _screen(WIDE_COMMA)
    assert screen is not None
    read = convert(WIDE_COMMA)
    for text, screened in zip(texts, screen(list(texts)), strict=True):
        if screened is not None:
            assert read(text) == (screened, None), text


def test_the_column_screen_passes_plain_comma_floats() -> None:
    screen = _screen(BOUNDED_COMMA)
    assert screen is not None
    assert screen(["45,123", "45.123", "-1,5", "1 234,5", "1.234,5", "1001", ""]) == [
        45.123,
        45.123,
        -1.5,
        None,  # grouped: left to the converter
        None,
        None,
        None,
    ]


@PROPERTIES
@given(st.lists(st.tuples(comma_floats(), local_dates(), local_dates()), max_size=20))
def test_a_checked_row_holds_each_converters_value_and_problem(
    rows: list[tuple[str, str, str]],
) -> None:
    checker = RowChecker(LOCAL, {column.name: p for p, column in enumerate(LOCAL.columns)})
    checked = checker.check([["k", *row] for row in rows])
    readers = [convert(column) for column in LOCAL.columns[1:]]
    for row, (record, problems) in zip(rows, checked, strict=True):
        expected: list[Coerced] = ["k"]
        expected_problems = []
        for column, read, text in zip(LOCAL.columns[1:], readers, row, strict=True):
            value, problem = read(text.strip()) if text.strip() else (None, None)
            expected.append(value)
            if problem is not None:
                expected_problems.append(f"{column.name}: {problem}")
        assert (list(record), problems) == (expected, expected_problems)
