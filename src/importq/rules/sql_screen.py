"""The row rules' first pass, in SQL: which staged rows Python must look at.

Most rows of an upload are valid, and reading every row into Python to say so costs more
than the rest of a chunk's work. So a chunk's rows are screened in SQL first: a row the
screen passes is valid by the row rules (:mod:`importq.rules.row_rules`), and only the others
(the *suspects*) are read and checked by :class:`~importq.rules.row_rules.RowChecker`, which
alone words the problems. The screen may pass fewer rows than are valid (a number with
an exponent is left to Python), never more: that is its one invariant, and
``tests/test_row_rules_properties.py`` holds the whole pipeline to it.

Per column present in the upload, on its trimmed cell ``t<position>``:

- empty (or absent from a short row): passes unless the column is required;
- int: at most 18 characters, sign included (so it fits a bigint), within min/max
  compared exactly;
- float: plain decimal notation in at most 30 characters (never out of a double's
  range), within min/max compared as doubles, as Python compares them;
- text: within its length bounds (PostgreSQL and Python both count code points);
- a column whose check only Python makes (a pattern, enum, bool, date, timestamp) is
  *judged by value*: its chunk's distinct values go through the column's converter
  once, and a row holding a value found wanting (``%(bad_<position>)s``) is a suspect;
- a conditional column: its source filled and it empty makes the row a suspect;
- a row with a reading problem is a suspect, and so is every row when a required column
  is absent from the upload.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from psycopg import sql

from importq.ingest.staged_table import at_most_chars, trimmed
from importq.rules.datasets import Column, ColumnType, Dataset
from importq.rules.row_rules import Converter, converter

# Patterns without bounded repeats ({1,18}), which PostgreSQL's regex engine runs five
# times slower; the length bound is a separate test.
_INT = sql.Literal("^[+-]?[0-9]+$")
_INT_LONGEST = 18  # so at most 18 digits: within a bigint
_FLOAT = sql.Literal(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
_FLOAT_LONGEST = 30  # never beyond a double's range, nor below its smallest


def _bounds(value: sql.Composable, column: Column, as_type: str) -> sql.Composable:
    """``min <= value <= max``, as Python compares the converted value with the bounds:
    an int exactly; a double with a bound that may be an int no double equals, so that
    bound becomes the nearest double inside it (the same test for any double)."""

    def double(bound: float, inward: float) -> float:
        rounded = float(bound)
        if rounded * inward < bound * inward:  # rounded outward (compared exactly): step in
            rounded = math.nextafter(rounded, inward * math.inf)
        return rounded

    def literal(bound: float, inward: float) -> sql.Composable:
        if as_type == "numeric":  # the bound's exact value, as Python compares ints
            return sql.SQL("{}::numeric").format(sql.Literal(str(Decimal(bound))))
        return sql.SQL("{}::float8").format(sql.Literal(repr(double(bound, inward))))

    if as_type == "float8" and column.min is not None and column.max is not None:
        low, high = double(column.min, 1), double(column.max, -1)
        above = math.nextafter(high, math.inf)
        if low <= high and math.isfinite(low) and math.isfinite(above):
            # One cast rather than two: bucket 1 of the thresholds [low, the double after
            # high] holds exactly low <= value <= high (the array form only compares;
            # the other computes a quotient, which can round a value near high out).
            thresholds = sql.Literal(f"{{{low!r},{above!r}}}")
            return sql.SQL("width_bucket({}, {}::float8[]) = 1").format(value, thresholds)
    checks = []
    if column.min is not None:
        checks.append(sql.SQL("{} >= {}").format(value, literal(column.min, 1)))
    if column.max is not None:
        checks.append(sql.SQL("{} <= {}").format(value, literal(column.max, -1)))
    return sql.SQL(" AND ").join(checks) if checks else sql.SQL("true")


def _number(
    t: sql.Composable, column: Column, pattern: sql.Composable, longest: int, as_type: str
) -> sql.Composed:
    value = sql.SQL("{}::{}").format(t, sql.SQL(as_type))
    # CASE, not AND: the cast must only see text the pattern passed.
    return sql.SQL("CASE WHEN octet_length({}) <= {} AND {} ~ {} THEN {} ELSE false END").format(
        t, sql.Literal(longest), t, pattern, _bounds(value, column, as_type)
    )


def _lengths(t: sql.Composable, column: Column) -> sql.Composable:
    checks = []
    if column.min_length is not None:
        checks.append(sql.SQL("char_length({}) >= {}").format(t, sql.Literal(column.min_length)))
    if column.max_length is not None:
        checks.append(at_most_chars(t, column.max_length))
    return sql.SQL(" AND ").join(checks) if checks else sql.SQL("true")


def _judged_by_value(column: Column) -> bool:
    if column.type in (ColumnType.INT, ColumnType.FLOAT):
        return False
    if column.type is ColumnType.TEXT:
        return column.pattern is not None
    return True


def _empty(t: sql.Composable) -> sql.Composed:
    return sql.SQL("coalesce({}, '') = ''").format(t)


def bad_values_parameter(position: int) -> str:
    return f"bad_{position}"


@dataclass(frozen=True)
class Screen:
    """The screen of one dataset over one upload's header.

    ``passes``: a boolean SQL expression over a chunk row's trimmed cells, true for rows
    that need no check in Python (NULL counts as false); ``judged``: position → converter
    of the columns judged by value, whose bad values the expression takes as parameters.
    """

    passes: sql.Composable
    judged: dict[int, Converter]

    @classmethod
    def of(cls, dataset: Dataset, positions: Mapping[str, int]) -> Screen:
        checks: list[sql.Composable] = []
        judged: dict[int, Converter] = {}
        if any(c.required and c.name not in positions for c in dataset.columns):
            # Only when the dataset gained a required column after the batch was staged:
            # Python fails every row ("missing").
            checks.append(sql.SQL("false"))
        for column in dataset.columns:
            if column.name not in positions:
                continue
            position = positions[column.name]
            t = trimmed(position)
            check: sql.Composable
            convert = converter(column)
            if convert is not None and _judged_by_value(column):
                judged[position] = convert
                placeholder = sql.Placeholder(bad_values_parameter(position))
                check = sql.SQL("NOT ({} = ANY({}::text[]))").format(t, placeholder)
            elif column.type is ColumnType.INT:
                check = _number(t, column, _INT, _INT_LONGEST, "numeric")
            elif column.type is ColumnType.FLOAT:
                check = _number(t, column, _FLOAT, _FLOAT_LONGEST, "float8")
            else:
                check = _lengths(t, column)
            when_empty = sql.SQL("false" if column.required else "true")
            checks.append(
                sql.SQL("CASE WHEN {} THEN {} ELSE {} END").format(_empty(t), when_empty, check)
            )
        for column in dataset.columns:
            source = column.required_if
            if source is None or source not in positions:
                continue
            filled = sql.SQL("NOT {}").format(_empty(trimmed(positions[source])))
            if column.name in positions:
                missing = _empty(trimmed(positions[column.name]))
                checks.append(sql.SQL("NOT ({} AND {})").format(filled, missing))
            else:
                checks.append(sql.SQL("NOT {}").format(filled))
        passes = sql.SQL(" AND ").join(sql.SQL("({})").format(c) for c in checks)
        return cls(passes=passes if checks else sql.SQL("true"), judged=judged)

    def bad_values(self, values: Iterable[tuple[int, str]]) -> dict[str, list[str]]:
        """The parameters of :attr:`passes`: per judged column, those of the given
        ``(position, trimmed value)`` pairs that its converter finds wanting."""
        bad: dict[str, list[str]] = {bad_values_parameter(p): [] for p in self.judged}
        for position, value in values:
            if self.judged[position](value)[1] is not None:
                bad[bad_values_parameter(position)].append(value)
        return bad
