"""Row rules: validate and coerce a staged row.

Invariants:

- Validation comes first. A row that fails validation gets a message naming the column
  and the problem, and it does not claim its key.
- Among the valid rows of one key, in line order, the first wins. Each later one is a
  ``duplicate of line N``. SQL applies this rule (``settle_chunk`` in
  ``sql/chunks.sql``), on keys that ``importq_trim`` trims exactly as ``str.strip``
  trims them.
- SQL screens a chunk's rows first (:mod:`importq.rules.sql_screen`). This module checks
  the rows the screen does not pass, and it alone words their problems.
- A valid value is stored as its converter reads it. SQL casts the trimmed cell when it
  writes it (``_value`` in :mod:`importq.pipeline.target_tables`), and the cast must
  give the same value, local formats (a decimal comma, a date's formats) included.

These are pure functions over plain data, with no I/O. The chunk worker and the tests
share them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from importq.rules.datasets import Column, ColumnType, Dataset

Value = str | None
Coerced = str | int | float | bool | date | datetime | None

_INT = re.compile(r"[+-]?[0-9]+")
# A number as importq reads it (and reports write it): ASCII digits, a dot for decimals.
NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
#: What groups a decimal-comma float's digits by threes: a space, a no-break space or a
#: narrow no-break space (as French and German spreadsheets write them).
DIGIT_GROUP_SEPARATORS = " \u00a0\u202f"
# A float of a decimal-comma column: NUMBER with a comma or a dot as the decimal mark,
# and its whole part perhaps grouped by threes. XLSX and JSON numbers come with a dot.
_COMMA_NUMBER = re.compile(
    rf"[+-]?(?:(?:[0-9]{{1,3}}(?:[{DIGIT_GROUP_SEPARATORS}][0-9]{{3}})+|[0-9]+)(?:[.,][0-9]*)?"
    r"|[.,][0-9]+)(?:[eE][+-]?[0-9]+)?"
)
_UNGROUPED = str.maketrans({",": ".", **dict.fromkeys(DIGIT_GROUP_SEPARATORS)})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


Converter = Callable[[str], tuple[Coerced, str | None]]


def _in_range(column: Column, text: str, number: float) -> str | None:
    if column.min is not None and number < column.min:
        return f"{text} is below {_plain(column.min)}"
    if column.max is not None and number > column.max:
        return f"{text} is above {_plain(column.max)}"
    return None


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _int_converter(column: Column) -> Converter:
    def convert(text: str) -> tuple[Coerced, str | None]:
        if not _INT.fullmatch(text):
            return None, f'"{text}" is not a whole number'
        number = int(text)
        if not _INT64_MIN <= number <= _INT64_MAX:
            return None, f"{text} is out of range"
        return number, _in_range(column, text, number)

    return convert


def _underflows(text: str, number: float) -> bool:
    """A number too small for a double, read as zero (PostgreSQL refuses it)."""
    mantissa = text.lower().partition("e")[0]
    return number == 0 and any(digit in mantissa for digit in "123456789")


def _float_converter(column: Column) -> Converter:
    def convert(text: str) -> tuple[Coerced, str | None]:
        if not NUMBER.fullmatch(text):
            return None, f'"{text}" is not a number'
        return _float(column, text, text)

    return convert


def _comma_float_converter(column: Column) -> Converter:
    """A decimal-comma column's converter: its value is that of the text with its group
    separators removed and a comma made a dot, which then matches NUMBER."""

    def convert(text: str) -> tuple[Coerced, str | None]:
        if not _COMMA_NUMBER.fullmatch(text):
            if "." in text and "," in text:
                return None, f'"{text}" is not a number: write it without a thousands separator'
            return None, f'"{text}" is not a number'
        return _float(column, text, text.translate(_UNGROUPED))

    return convert


def _float(column: Column, text: str, plain: str) -> tuple[Coerced, str | None]:
    """The float of ``plain``, a NUMBER, checked; problems quote ``text``, as uploaded."""
    number = float(plain)
    if not math.isfinite(number) or _underflows(plain, number):
        return None, f'"{text}" is out of range'
    return number, _in_range(column, text, number)


def _bool(text: str) -> tuple[Coerced, str | None]:
    # ASCII only, as PostgreSQL reads booleans. In Python alone, "yeſ" folds to "yes".
    lowered = text.lower() if text.isascii() else ""
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE, None
    return None, f'"{text}" is not true or false'


# The ISO 8601 forms that PostgreSQL reads as Python does. They must agree, because the
# stored value is PostgreSQL's reading of the text. So there are no week dates
# (2024-W01-1), no hour-only times and no decimal comma. Fractions stop at microseconds,
# because PostgreSQL rounds what Python cuts. An offset's minutes and seconds are under
# 60, and no offset reaches 16 hours. After a time without colons, the offset has none
# either, because PostgreSQL misreads 20240101T1000-01:00.
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{8}"
_SIXTY = r"[0-5][0-9]"
_TIME = (
    rf"[0-9]{{2}}:[0-9]{{2}}(?::[0-9]{{2}}(?:\.[0-9]{{1,6}})?)?"
    rf"(?:Z|[+-][0-9]{{2}}(?:(?::{_SIXTY}){{1,2}}|{_SIXTY})?)?"
)
_BASIC_TIME = rf"[0-9]{{4}}(?:[0-9]{{2}}(?:\.[0-9]{{1,6}})?)?(?:Z|[+-][0-9]{{2}}(?:{_SIXTY})?)?"
DATE_FORM = re.compile(_DATE)
TIMESTAMP_FORM = re.compile(rf"(?:{_DATE})(?:[T ](?:{_TIME}|{_BASIC_TIME}))?")
_LONGEST_OFFSET = timedelta(hours=16)


# A date as people write it locally: day and month in either order, then the year.
# Without a declared format it is never read, only worded.
_LOCAL_DATE = re.compile(r"([0-9]{1,2})([/.-])([0-9]{1,2})\2([0-9]{4})")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DATE_PARTS = {"DD": "[0-9][0-9]?", "MM": "[0-9][0-9]?", "YYYY": "[0-9][0-9][0-9][0-9]"}


def _iso_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if DATE_FORM.fullmatch(text) else None
    except ValueError:
        return None


def _date(text: str) -> tuple[Coerced, str | None]:
    """A date of a column without formats: YYYY-MM-DD (or YYYYMMDD) alone."""
    value = _iso_date(text)
    if value is not None:
        return value, None
    local = _LOCAL_DATE.fullmatch(text)
    if local is None:
        return None, f'"{text}" is not a date (YYYY-MM-DD)'
    advice = "write YYYY-MM-DD or declare the date format"
    first, second = int(local[1]), int(local[3])
    if first != second and 1 <= first <= 12 and 1 <= second <= 12:
        readings = f"{first} {_MONTHS[second - 1]} or {second} {_MONTHS[first - 1]}"
        return None, f'"{text}" is ambiguous ({readings}): {advice}'
    return None, f'"{text}" is not a date (YYYY-MM-DD): {advice}'


def _separator(form: str) -> str:
    """The separator of a format that ``check_date_format`` returned."""
    return next(character for character in form if not character.isalpha())


def date_format_regex(form: str) -> str:
    """The anchored regex, the same in Python and PostgreSQL, of the texts that a format
    (as ``check_date_format`` returns it) reads: DD and MM of 1 or 2 digits, YYYY of 4.

    Those texts are the format's, whether or not they name a real day.
    """
    separator = _separator(form)
    parts = [_DATE_PARTS[token] for token in form.split(separator)]
    return "^" + f"[{separator}]".join(parts) + "$"


def _format_reader(form: str) -> Callable[[str], date | None]:
    """The date a text of the format's regex names, or None for no real day."""
    separator = _separator(form)
    tokens = form.split(separator)

    def read(text: str) -> date | None:
        parts = dict(zip(tokens, map(int, text.split(separator)), strict=True))
        try:
            return date(parts["YYYY"], parts["MM"], parts["DD"])
        except ValueError:
            return None

    return read


def _formats_converter(column: Column) -> Converter:
    """A date column's converter with formats.

    The first format whose regex matches the text decides, and a text naming no real
    day in it fails: no later format is tried. A text that no format matches must be
    YYYY-MM-DD (or YYYYMMDD). SQL writes the date by the same order (``_value`` in
    :mod:`importq.pipeline.target_tables`), so the two must not differ.
    """
    readers = [
        (re.compile(date_format_regex(form)).fullmatch, _format_reader(form))
        for form in column.formats
    ]
    problem = " or ".join(column.formats)

    def read(text: str) -> date | None:
        for matches, read_format in readers:
            if matches(text):
                return read_format(text)
        return _iso_date(text)

    def convert(text: str) -> tuple[Coerced, str | None]:
        value = read(text)
        return (value, None) if value is not None else (None, f'"{text}" is not a date ({problem})')

    return convert


def _timestamp(text: str) -> tuple[Coerced, str | None]:
    try:
        moment = datetime.fromisoformat(text) if TIMESTAMP_FORM.fullmatch(text) else None
    except ValueError:
        moment = None
    if moment is None:
        return None, f'"{text}" is not a timestamp (ISO 8601)'
    offset = moment.utcoffset()
    if offset is not None and abs(offset) >= _LONGEST_OFFSET:
        return None, f'"{text}" has a UTC offset beyond 15:59:59'
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), None


def _text_converter(column: Column) -> Converter:
    def convert(text: str) -> tuple[Coerced, str | None]:
        if column.min_length is not None and len(text) < column.min_length:
            return text, f"is shorter than {column.min_length} characters"
        if column.max_length is not None and len(text) > column.max_length:
            return text, f"is longer than {column.max_length} characters"
        if column.pattern is not None and not column.pattern.fullmatch(text):
            expected = column.pattern_description or "in the expected form"
            return text, f'"{text}" is not {expected}'
        if column.type is ColumnType.ENUM and text not in column.values:
            return text, f'"{text}" is not one of {", ".join(column.values)}'
        return text, None

    return convert


def converter(column: Column) -> Converter | None:
    """The function that turns a non-empty normalised cell of ``column`` into its type.

    The function returns ``(value, problem)``, and ``problem`` is None when the cell is
    valid. For text that any value satisfies there is no function, and this returns
    None: the cell is its own value.
    """
    if column.type is ColumnType.INT:
        return _int_converter(column)
    if column.type is ColumnType.FLOAT:
        return (
            _comma_float_converter(column)
            if column.decimal == "comma"
            else _float_converter(column)
        )
    if column.type is ColumnType.BOOL:
        return _bool
    if column.type is ColumnType.DATE:
        return _formats_converter(column) if column.formats else _date
    if column.type is ColumnType.TIMESTAMP:
        return _timestamp
    constrained = (column.min_length, column.max_length, column.pattern) != (None, None, None)
    if constrained or column.type is ColumnType.ENUM:
        return _text_converter(column)
    return None


def _screen(column: Column) -> Callable[[list[str]], list[Coerced]] | None:
    """A fast pass over a whole column, or None for a column that has none.

    The cells that are plainly valid come back converted, and the others as None. The
    per-cell converter decides those, and it alone words their problems. So a screen may
    pass fewer cells than are valid, never more, and a cell it passes has the value that
    the converter gives it.
    """
    low = -math.inf if column.min is None else column.min
    high = math.inf if column.max is None else column.max
    if column.type in (ColumnType.INT, ColumnType.FLOAT):
        match = (_INT if column.type is ColumnType.INT else NUMBER).fullmatch
        parse: Callable[[str], float] = int if column.type is ColumnType.INT else float
        bounds = (max(low, _INT64_MIN), min(high, _INT64_MAX)) if parse is int else (low, high)
        lowest, highest = bounds
        comma = column.type is ColumnType.FLOAT and column.decimal == "comma"

        def numbers(texts: list[str]) -> list[Coerced]:
            # A decimal comma made a dot: the converter's reading of an ungrouped number.
            # Grouped digits are left to the converter.
            if comma:
                texts = [t.replace(",", ".") for t in texts]
            parsed = [parse(t) if t and match(t) else None for t in texts]
            # v - v == 0 is False for inf and nan, which are out of range.
            return [
                v
                if v is not None
                and lowest <= v <= highest
                and v - v == 0
                and (v != 0 or not _underflows(t, v))
                else None
                for v, t in zip(parsed, texts, strict=True)
            ]

        return numbers
    if column.type is ColumnType.TEXT:
        shortest = column.min_length or 0
        longest = column.max_length if column.max_length is not None else math.inf
        fullmatch = column.pattern.fullmatch if column.pattern is not None else None

        def texts_(texts: list[str]) -> list[Coerced]:
            if fullmatch is None:
                return [t if t and shortest <= len(t) <= longest else None for t in texts]
            return [
                t if t and shortest <= len(t) <= longest and fullmatch(t) else None for t in texts
            ]

        return texts_
    return None


class StagedRow(NamedTuple):
    """A row as staged: its line, its uploaded values, and a reading problem if any."""

    line: int
    values: Sequence[Value]
    problem: str | None = None


class RowChecker:
    """Validates the rows of one upload.

    An empty or whitespace-only value counts as missing. :meth:`check` returns, per row,
    the coerced record and the problems. The record is in the dataset's column order,
    with ``None`` for empty cells. Each problem reads ``<column>: <problem>``. The
    problems come in column order, with the conditional ones last.

    The dataset's columns are lined up with the uploaded header once. Rows are then
    checked against that plan a column at a time, because list comprehensions over a
    column run in C far more than a loop over rows does.
    """

    def __init__(self, dataset: Dataset, positions: Mapping[str, int]) -> None:
        self._width = len(dataset.columns)
        # Only columns present in the upload are read, and absent ones stay None. The
        # header check refuses an upload without a mandatory column, so one is absent
        # only when the dataset gained it after the batch was staged.
        self._plan = [
            (
                index,
                column.name,
                positions[column.name],
                column.required,
                converter(column),
                _screen(column),
            )
            for index, column in enumerate(dataset.columns)
            if column.name in positions
        ]
        self._reach = max((plan[2] for plan in self._plan), default=-1) + 1
        self._absent_required = [
            f"{column.name}: missing"
            for column in dataset.columns
            if column.required and column.name not in positions
        ]
        by_name = {column.name: i for i, column in enumerate(dataset.columns)}
        self._conditions = [
            (
                i,
                by_name[column.required_if],
                f"{column.name}: missing (required with {column.required_if})",
            )
            for i, column in enumerate(dataset.columns)
            if column.required_if is not None
        ]

    def judged(
        self, rows: Sequence[StagedRow]
    ) -> list[tuple[tuple[Coerced, ...] | None, list[str]]]:
        """Per row, its record (None for a row with a reading problem) and its problems:
        the reading problem alone, or the validation problems (none: a valid row)."""
        readable = [row for row in rows if row.problem is None]
        checked = iter(self.check([row.values for row in readable]))
        return [(None, [row.problem]) if row.problem is not None else next(checked) for row in rows]

    def verdicts(
        self, rows: Sequence[StagedRow]
    ) -> list[tuple[tuple[Coerced, ...] | None, str | None]]:
        """Per row, ``(record, None)`` when it is valid, else ``(None, message)``.

        The message is the row's reading problem, or else its validation problems
        joined by ``; ``.
        """
        return [
            (None, "; ".join(problems)) if problems else (record, None)
            for record, problems in self.judged(rows)
        ]

    def failures(self, rows: Sequence[StagedRow]) -> list[tuple[int, str]]:
        """The rows that fail, as ``(line, message)`` (see :meth:`verdicts`)."""
        return [
            (row.line, message)
            for row, (_, message) in zip(rows, self.verdicts(rows), strict=True)
            if message is not None
        ]

    def check(self, rows: Sequence[Sequence[Value]]) -> list[tuple[tuple[Coerced, ...], list[str]]]:
        count = len(rows)
        if any(len(values) < self._reach for values in rows):
            rows = [[*values, *[None] * (self._reach - len(values))] for values in rows]
        found: dict[int, list[str]] = {}  # problems by row; most rows have none
        absent: list[Coerced] = [None] * count  # shared, never written: absent columns
        columns: list[Sequence[Coerced]] = [absent] * self._width
        filled: dict[int, list[str]] = {}
        for index, name, position, required, convert, screen in self._plan:
            texts = [(values[position] or "").strip() for values in rows]
            filled[index] = texts
            if required and "" in texts:
                for row, text in enumerate(texts):
                    if not text:
                        found.setdefault(row, []).append(f"{name}: missing")
            if convert is None:
                columns[index] = [text or None for text in texts]
                continue
            if screen is None:
                converted = [convert(text) if text else _EMPTY for text in texts]
                columns[index] = [value for value, _ in converted]
                for row, (_, problem) in enumerate(converted):
                    if problem is not None:
                        found.setdefault(row, []).append(f"{name}: {problem}")
                continue
            screened = screen(texts)
            for row, value in enumerate(screened):
                if value is None and texts[row]:
                    screened[row], problem = convert(texts[row])
                    if problem is not None:
                        found.setdefault(row, []).append(f"{name}: {problem}")
            columns[index] = screened
        for index, source, message in self._conditions:
            if source not in filled:
                continue
            present = filled.get(index)
            for row, text in enumerate(filled[source]):
                if text and (present is None or not present[row]):
                    found.setdefault(row, []).append(message)
        records = list(zip(*columns, strict=True))
        if self._absent_required:
            return [
                (record, [*self._absent_required, *found.get(row, ())])
                for row, record in enumerate(records)
            ]
        return [(record, found.get(row, _NO_PROBLEMS)) for row, record in enumerate(records)]


_NO_PROBLEMS: list[str] = []  # shared and never mutated: callers only read problems
_EMPTY: tuple[Coerced, str | None] = (None, None)
