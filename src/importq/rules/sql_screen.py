"""The row rules' first pass, in SQL: which staged rows Python must look at.

The screen's one invariant: a row the screen passes is valid by the row rules
(:mod:`importq.rules.row_rules`). The screen may pass fewer rows than are valid, but
never more. A number with an exponent, for instance, is left to Python.
``tests/unit/test_row_rules_properties.py`` holds the whole pipeline to this invariant.

Most rows of an upload are valid, and reading every row into Python just to say so costs
more than the rest of a chunk's work. So a chunk's rows are screened in SQL first. Only
the rows the screen does not pass, the *suspects*, are read and checked by
:class:`~importq.rules.row_rules.RowChecker`, which alone words the problems.

Each column present in the upload is tested on its trimmed cell ``t<position>``:

- An empty cell passes unless the column is required. So does a cell absent from a
  short row.
- An int has at most 18 characters, sign included, so it fits a bigint. It is compared
  with min and max exactly.
- A float (with a decimal dot) is in plain decimal notation, in at most 30 characters,
  so it is never out of a double's range. It is compared with min and max as doubles,
  as Python compares them.
- A text is within its length bounds. PostgreSQL and Python both count code points.
- A column whose check only Python makes is *judged by value*. That is a pattern, an
  enum, a bool, a date (with local formats or not), a timestamp, or a float with a
  decimal comma. The chunk's distinct values of the column go through its converter
  once. A row holding a value found wanting (``%(bad_<position>)s``) is a suspect.
- For a conditional column, a row whose source is filled while the column is empty is
  a suspect.

A row with a reading problem is a suspect. So is every row when a required column is
absent from the upload.
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

# Patterns without bounded repeats such as {1,18}, which PostgreSQL's regex engine runs
# much slower. The length bound is a separate test.
_INT = sql.Literal("^[+-]?[0-9]+$")
_INT_LONGEST = 18  # so at most 18 digits: within a bigint
_FLOAT = sql.Literal(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
_FLOAT_LONGEST = 30  # never beyond a double's range, nor below its smallest


def _bounds(value: sql.Composable, column: Column, as_type: str) -> sql.Composable:
    """The SQL test ``min <= value <= max``, as Python compares the converted value.

    An int is compared with the bounds exactly. A double may be compared with a bound
    that is an int no double equals. That bound becomes the nearest double inside it,
    which gives the same result for any double.
    """

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
            # One cast rather than two. Bucket 1 of the thresholds [low, the double
            # after high] holds exactly the values with low <= value <= high. The array
            # form of width_bucket only compares. The other form computes a quotient,
            # which can round a value near high out of the bucket.
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
    if column.type is ColumnType.FLOAT:
        return column.decimal == "comma"
    if column.type is ColumnType.INT:
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

    ``passes`` is a boolean SQL expression over a chunk row's trimmed cells. It is true
    for rows that need no check in Python, and NULL counts as false. ``judged`` maps the
    position of each column judged by value to its converter. The expression takes the
    bad values of those columns as parameters.
    """

    passes: sql.Composable
    judged: dict[int, Converter]

    @classmethod
    def of(cls, dataset: Dataset, positions: Mapping[str, int]) -> Screen:
        checks: list[sql.Composable] = []
        judged: dict[int, Converter] = {}
        if any(c.required and c.name not in positions for c in dataset.columns):
            # Only when the dataset gained a required column after the batch was staged.
            # Python then fails every row as "missing".
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
        """The parameters of :attr:`passes`.

        For each judged column, they list the values among the given
        ``(position, trimmed value)`` pairs that its converter finds wanting.
        """
        bad: dict[str, list[str]] = {bad_values_parameter(p): [] for p in self.judged}
        for position, value in values:
            if self.judged[position](value)[1] is not None:
                bad[bad_values_parameter(position)].append(value)
        return bad
